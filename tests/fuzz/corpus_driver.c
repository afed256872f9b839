/* A main() for fuzz targets without libFuzzer: feeds every regular file of
 * the directories (or the files) named on the command line to
 * LLVMFuzzerTestOneInput, in name order, so a corpus is also a test that
 * runs in every build. Exits non-zero when an argument cannot be read or
 * holds no input at all, so a lost corpus fails loudly. */
#include "corpus_driver.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/alloc.h"

/* Corpus inputs are small; anything larger is a mistake in the corpus. */
#define MAX_CORPUS_INPUT (1024 * 1024)

/* Reads a whole file into a fresh heap block of exactly its size, so
 * AddressSanitizer sees any read past the end. */
static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    static unsigned char buf[MAX_CORPUS_INPUT + 1];

    if (!f) {
        fprintf(stderr, "corpus_driver: %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t n = fread(buf, 1, sizeof(buf), f);
    int bad = ferror(f) || n > MAX_CORPUS_INPUT;
    fclose(f);
    if (bad) {
        fprintf(stderr, "corpus_driver: %s: unreadable or over %d bytes\n", path, MAX_CORPUS_INPUT);
        return -1;
    }

    unsigned char *copy = sb_xmalloc(n);
    memcpy(copy, buf, n);
    LLVMFuzzerTestOneInput(copy, n);
    free(copy);
    return 0;
}

static int is_regular(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Runs every regular file of dir; returns how many, or -1 on an error. */
static long run_dir(const char *dir)
{
    struct dirent **names = NULL;
    long count = 0;
    int n = scandir(dir, &names, NULL, alphasort);

    if (n < 0) {
        fprintf(stderr, "corpus_driver: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    for (int i = 0; i < n; i++) {
        char path[4096];
        int len = snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
        if (count >= 0 && len > 0 && (size_t)len < sizeof(path) && is_regular(path))
            count = run_file(path) == 0 ? count + 1 : -1;
        free(names[i]);
    }
    free(names);
    return count;
}

int main(int argc, char **argv)
{
    long total = 0;

    for (int i = 1; i < argc; i++) {
        long n = is_regular(argv[i]) ? (run_file(argv[i]) == 0 ? 1 : -1) : run_dir(argv[i]);
        if (n <= 0) {
            fprintf(stderr, "corpus_driver: %s: no input run\n", argv[i]);
            return 1;
        }
        total += n;
    }
    if (total == 0) {
        fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
        return 1;
    }
    printf("corpus_driver: %ld inputs, no crash\n", total);
    return 0;
}
