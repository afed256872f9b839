# The two commands: `make run` (a development broker with its own PKI and
# example secrets) and `make test` (installs what the tests need, builds,
# runs every test). Everything else here serves those two.
BUILD      ?= build
ASAN_BUILD ?= build-asan
MESON_OPTS ?= -Dwerror=true
VENV       ?= .venv

.PHONY: all build run test deps unit asan integration lint bench clean

all: build

$(BUILD)/build.ninja:
	meson setup $(BUILD) $(MESON_OPTS)

build: $(BUILD)/build.ninja
	ninja -C $(BUILD)

run:
	tools/build-deps.sh
	$(MAKE) build
	$(BUILD)/secrets-broker --dev

deps:
	tools/build-deps.sh
	tools/test-deps.sh

unit: build
	meson test -C $(BUILD) --print-errorlogs

$(ASAN_BUILD)/build.ninja:
	meson setup $(ASAN_BUILD) $(MESON_OPTS) -Db_sanitize=address,undefined -Db_lundef=false

asan: $(ASAN_BUILD)/build.ninja
	ninja -C $(ASAN_BUILD)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		meson test -C $(ASAN_BUILD) --print-errorlogs

integration: build
	tools/run-integration.sh $(BUILD)

lint:
	tools/lint/run.sh

# The whole integration suite runs twice: against the normal build, and
# against the ASan+UBSan build (any sanitizer report fails the test).
test: deps
	$(MAKE) build lint unit asan
	$(MAKE) integration
	SB_BROKER=$(ASAN_BUILD)/secrets-broker tools/run-integration.sh $(ASAN_BUILD)

bench: build
	bench/run.sh $(BUILD)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
