/* The entry point every fuzz target defines (the libFuzzer interface).
 * libFuzzer calls it when a target is built with -fsanitize=fuzzer;
 * otherwise corpus_driver.c calls it once per corpus file, so each corpus
 * also runs as an ordinary test. */
#ifndef SB_TESTS_FUZZ_CORPUS_DRIVER_H
#define SB_TESTS_FUZZ_CORPUS_DRIVER_H

#include <stddef.h>
#include <stdint.h>

/* Runs the target on size bytes. Must return 0; a bug aborts (assert,
 * sanitizer) rather than returning an error. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
