#!/usr/bin/env bash
# The project's lints, run by `make test`: formatting and width
# (clang-format), banned calls, no TODO marks, the layering of src/,
# no machine paths, and cppcheck. Prints every finding, fails on any.
set -uo pipefail
cd "$(dirname "$0")/../.."

failed=0
note() { printf 'lint: %s\n' "$*" >&2; failed=1; }

c_files=$(git ls-files '*.c' '*.h')

# 1. Layout: .clang-format is the rule (100 columns among others).
for f in $c_files; do
	if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then
		note "$f is not formatted (run: clang-format -i $f)"
	fi
done

# 2. Calls the project bans: unbounded formatting and copying, atoi.
banned=$(grep -nHE '\b(sprintf|vsprintf|strcpy|strcat|gets|atoi|atol)\s*\(' $c_files)
[ -n "$banned" ] && note "banned calls:"$'\n'"$banned"

# 3. Secrets are compared in constant time (sb_ct_equal), never memcmp.
# ("secret" alone names secrets as often as their bytes, so it is not a trigger.)
ctime=$(grep -nHiE 'memcmp\s*\(.*(token|password|signature|sb_secret_data|key_?data)' $c_files |
	grep -v 'sb_ct_equal')
[ -n "$ctime" ] && note "memcmp on secret material (use sb_ct_equal):"$'\n'"$ctime"

# 4. Known shortcomings live in docs/LIMITATIONS.md, not in code.
marks=$(grep -nHE '\b(TODO|FIXME|XXX)\b' $c_files)
[ -n "$marks" ] && note "TODO/FIXME marks:"$'\n'"$marks"

# 5. Layering: a folder of src/ includes only folders below it.
rank() {
	case "$1" in
	core) echo 0 ;; dev) echo 1 ;; obs) echo 2 ;; clients) echo 3 ;;
	backend) echo 4 ;; auth) echo 5 ;; broker) echo 6 ;; net) echo 7 ;;
	*) echo 99 ;;
	esac
}
for f in $(git ls-files 'src/*/*.c' 'src/*/*.h'); do
	own=$(echo "$f" | cut -d/ -f2)
	for dep in $(sed -n 's|^#include "\([a-z]*\)/.*|\1|p' "$f" | sort -u); do
		if [ "$dep" != "$own" ] && [ "$(rank "$dep")" -ge "$(rank "$own")" ]; then
			note "$f ($own) includes $dep/, which is not below it"
		fi
	done
done

# 6. Nothing of this machine baked into the project (the pattern is built
# from pieces so that this file does not match it).
home_dirs="/wo""rk/|/ro""ot/"
leaks=$(git grep -nE "$home_dirs" -- . ':!*.md' 2>/dev/null)
[ -n "$leaks" ] && note "absolute machine paths:"$'\n'"$leaks"

# 7. Static analysis of the sources.
if command -v cppcheck >/dev/null; then
	if ! cppcheck --quiet --error-exitcode=1 --std=c11 --enable=warning,portability \
		--inline-suppr -I src -D_GNU_SOURCE --suppress=missingIncludeSystem src 2>&1; then
		note "cppcheck found problems (above)"
	fi
fi

[ $failed -eq 0 ] && echo "lint: clean"
exit $failed
