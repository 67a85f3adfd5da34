# fisherd — build, test, run.
#
#   make deps     install the Debian packages building and testing need (root)
#   make          build/libfisher.a, build/libfisher.so, build/fisherd
#   make test     deps, build, unit + parity tests, then again under ASan+UBSan,
#                 then each fuzzer for 20 s
#   make fuzz     the libFuzzer targets (clang), FUZZ_SECONDS (300) each
#   make run      the daemon on 127.0.0.1:8080 (REST API, dashboard), data in ./var
#   make install  the daemon, dashboard, systemd unit, man page (PREFIX=/usr/local, DESTDIR)
#   make bench    C vs PyTorch, drift and freezing, 1 vs 2 MPI ranks, a whole job, the API; one
#                 table of ratios into README.md
#   make fixtures regenerate the PyTorch golden files (needs python3-torch)
#   make clean

CC      ?= cc
BUILD   ?= build
OPT     ?= -O2
PKGS    := jansson libpng libjpeg
# OpenBLAS built on OpenMP, so its GEMMs and the library's own OpenMP loops
# share one thread team: two pools (OpenBLAS's pthreads and OpenMP's) fought
# over the 2 cores and made a 2-thread mit-b0 step 2x slower than 1 thread
# (`make bench`: 320 ms vs 159 ms; one team: ~105 ms). The rpath pins this
# build whichever libopenblas.so.0 update-alternatives prefers.
BLAS_DIR := /usr/lib/x86_64-linux-gnu/openblas-openmp
BLAS_CFLAGS := -I/usr/include/x86_64-linux-gnu/openblas-openmp
BLAS_LIBS := -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR) -lopenblas
CFLAGS_BASE := -std=c11 -g -Wall -Wextra -Werror -D_DEFAULT_SOURCE -fPIC -fno-math-errno -fopenmp \
               -Ilib $(BLAS_CFLAGS) $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
CFLAGS  ?= $(OPT)
CFLAGS  += $(CFLAGS_BASE)
LDLIBS  := $(BLAS_LIBS) $(shell pkg-config --libs $(PKGS) 2>/dev/null) -fopenmp -lm -lpthread
# The daemon's own: HTTP, the store, the event loop, sd_notify. lib/ never needs them.
# libsystemd is not linked: notify.c loads it when a service manager
# listens (libsystemd-dev, in DEB_PKGS, brings its header).
DAEMON_PKGS := libmicrohttpd sqlite3 libuv
DAEMON_LIBS := $(shell pkg-config --libs $(DAEMON_PKGS) 2>/dev/null)
# Open MPI's header, for the one file that speaks MPI (daemon/mpi_comm.c).
# libmpi is not linked: `fisherd worker` loads it, so `fisherd serve` does
# not carry it (~1 MB of resident memory; see mpi_comm.c).
MPI_CFLAGS := $(shell pkg-config --cflags ompi-c 2>/dev/null)
SAN     := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

# Every package building and testing needs. The daemon's (libmicrohttpd,
# SQLite, libuv) are listed now so a machine set up once stays set up;
# systemd for systemd-analyze and man-db for man, which check the unit and
# the man page it names (tests/integration/test_install.py).
DEB_PKGS := gcc make pkg-config libopenblas-openmp-dev libjansson-dev libcmocka-dev zlib1g-dev libpng-dev libjpeg62-turbo-dev \
            python3 python3-pytest libsqlite3-dev libuv1-dev libmicrohttpd-dev libsystemd-dev systemd man-db \
            openmpi-bin libopenmpi-dev

LIB_SRC   := $(sort $(wildcard lib/*.c))
LIB_OBJ   := $(LIB_SRC:lib/%.c=$(BUILD)/lib/%.o)
UNIT_SRC  := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BIN  := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
DAEMON_SRC := $(sort $(wildcard daemon/*.c))
DAEMON_OBJ := $(DAEMON_SRC:daemon/%.c=$(BUILD)/daemon/%.o)
API_SRC   := $(sort $(wildcard api/*.c))
API_OBJ   := $(API_SRC:api/%.c=$(BUILD)/api/%.o)
MIGRATIONS := $(sort $(wildcard migrations/*.sql))
# Everything of the daemon but main(), so unit tests can link it too.
CORE_OBJ  := $(filter-out $(BUILD)/daemon/main.o,$(DAEMON_OBJ)) $(API_OBJ) $(BUILD)/gen/migrations.o \
             $(BUILD)/gen/openapi.o

.PHONY: all deps torch-deps test unit unit-asan integration run bench bench-store fixtures clean
.DELETE_ON_ERROR:

all: $(BUILD)/libfisher.a $(BUILD)/libfisher.so $(BUILD)/fisherd

deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "deps: all present"; fi

$(BUILD)/lib/%.o: lib/%.c $(wildcard lib/*.h) | $(BUILD)/lib
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/daemon/%.o: daemon/%.c $(wildcard lib/*.h daemon/*.h api/*.h) | $(BUILD)/daemon
	$(CC) $(CFLAGS) -Idaemon -Iapi -c $< -o $@

$(BUILD)/daemon/mpi_comm.o: CFLAGS += $(MPI_CFLAGS)

$(BUILD)/api/%.o: api/%.c $(wildcard lib/*.h daemon/*.h api/*.h) | $(BUILD)/api
	$(CC) $(CFLAGS) -Idaemon -Iapi -c $< -o $@

# The schema migrations, embedded: the binary carries the SQL it applies.
$(BUILD)/gen/migrations.c: $(MIGRATIONS) daemon/embed_migrations.sh | $(BUILD)/gen
	sh daemon/embed_migrations.sh $(MIGRATIONS) > $@

$(BUILD)/gen/migrations.o: $(BUILD)/gen/migrations.c
	$(CC) $(CFLAGS) -Idaemon -c $< -o $@

# The OpenAPI description the daemon serves at /api/v1/openapi.json.
$(BUILD)/gen/openapi.c: api/openapi.json daemon/embed_text.sh | $(BUILD)/gen
	sh daemon/embed_text.sh fisherd_openapi_json api/openapi.json > $@

$(BUILD)/gen/openapi.o: $(BUILD)/gen/openapi.c
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libfisherd.a: $(CORE_OBJ)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/libfisher.a: $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/libfisher.so: $(LIB_OBJ)
	$(CC) $(LDFLAGS) -shared -o $@ $^ $(LDLIBS)

$(BUILD)/fisherd: $(BUILD)/daemon/main.o $(BUILD)/libfisherd.a $(BUILD)/libfisher.a
	$(CC) $(LDFLAGS) -o $@ $^ $(DAEMON_LIBS) $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(wildcard tests/unit/*.h) $(BUILD)/libfisherd.a $(BUILD)/libfisher.a | $(BUILD)/tests
	$(CC) $(CFLAGS) -Itests/unit -Idaemon -Iapi $< -o $@ $(BUILD)/libfisherd.a $(BUILD)/libfisher.a -lcmocka -lz $(DAEMON_LIBS) $(LDLIBS)

$(BUILD)/lib $(BUILD)/daemon $(BUILD)/api $(BUILD)/gen $(BUILD)/tests:
	mkdir -p $@

# Unit and parity tests; each binary prints cmocka's summary. Tests find the
# committed golden files through FISHER_FIXTURES.
unit: $(UNIT_BIN)
	@fail=0; for t in $(UNIT_BIN); do \
	  FISHER_FIXTURES=tests/parity/fixtures $$t || fail=1; \
	done; exit $$fail

unit-asan:
	$(MAKE) BUILD=$(BUILD)/asan OPT="-O1 $(SAN)" LDFLAGS="$(SAN)" unit

# The command line, black-box (pytest): what a user types and gets.
integration: all
	FISHERD=$(abspath $(BUILD)/fisherd) /usr/bin/python3 -m pytest -q tests/integration

# The dashboard (web/): plain files, plus uPlot from npm copied into
# web/vendor/ (git-ignored), so `fisherd serve --web-root web` serves a
# complete page. Node.js and npm come from Debian when the machine has none.
.PHONY: web browser-test
web: web/vendor/uPlot.esm.js

web/vendor/uPlot.esm.js: web/package.json web/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "web: installing nodejs npm"; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm; }
	cd web && npm ci --no-audit --no-fund
	mkdir -p web/vendor
	cp web/node_modules/uplot/LICENSE web/vendor/uPlot.LICENSE
	cp web/node_modules/uplot/dist/uPlot.min.css web/vendor/
	cp web/node_modules/uplot/dist/uPlot.esm.js web/vendor/

# The dashboard end to end: playwright-core (npm) drives Debian's Chromium
# against a daemon the test starts and stops itself (~30 s; screenshots in
# build/browser/).
browser-test: web
	$(MAKE) all
	@dpkg-query -W -f='$${Status}' chromium 2>/dev/null | grep -q 'ok installed' || { echo "browser-test: installing chromium"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }
	@test tests/browser/node_modules/.package-lock.json -nt tests/browser/package-lock.json || \
	  (cd tests/browser && npm ci --no-audit --no-fund)
	FISHERD=$(abspath $(BUILD)/fisherd) node --test --test-reporter=spec tests/browser/dashboard.test.mjs

# Fuzzing (tests/fuzz/): libFuzzer targets for the job-spec validator, the
# safetensors reader, the PNG/JPEG loaders and the HTTP request target.
# Debian's clang builds the library a second time, with the fuzzer's
# coverage hooks and ASan+UBSan, in $(BUILD)/fuzz (gcc's objects carry
# neither). Each run first replays every input that once crashed
# (tests/fuzz/regressions/<target>/), then fuzzes from the committed seeds
# (tests/fuzz/corpus/<target>/); what it finds new goes to the git-ignored
# $(FUZZ_SCRATCH)/<target>/, and a crash to $(FUZZ_SCRATCH)/crashes/.
# One target at a time, one process each: the machine is shared.
FUZZ_PKGS    := clang-14 libclang-rt-14-dev libomp-14-dev
FUZZ_CC      := clang-14
FUZZ_BUILD   := $(BUILD)/fuzz
FUZZ_TARGETS := job_spec safetensors image http_target
FUZZ_SECONDS ?= 300
FUZZ_SCRATCH ?= tests/fuzz/scratch
# -Wno-pass-failed: instrumented loops defeat `omp simd`, which clang reports.
FUZZ_CFLAGS  := -O1 $(CFLAGS_BASE) -Wno-pass-failed -Idaemon -Iapi $(SAN) -fsanitize=fuzzer-no-link
FUZZ_OBJ     := $(LIB_SRC:lib/%.c=$(FUZZ_BUILD)/lib/%.o) $(FUZZ_BUILD)/api/http.o \
                $(FUZZ_BUILD)/daemon/store.o $(FUZZ_BUILD)/gen/migrations.o
FUZZ_BIN     := $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/%)

.PHONY: fuzz fuzz-smoke fuzz-deps fuzz-build
fuzz-deps:
	@$(MAKE) --no-print-directory deps DEB_PKGS="$(FUZZ_PKGS)"

fuzz-build: fuzz-deps
	$(MAKE) $(FUZZ_BIN)

$(FUZZ_BUILD)/lib/%.o: lib/%.c $(wildcard lib/*.h)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_BUILD)/api/%.o: api/%.c $(wildcard lib/*.h daemon/*.h api/*.h)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_BUILD)/daemon/%.o: daemon/%.c $(wildcard lib/*.h daemon/*.h api/*.h)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_BUILD)/gen/migrations.o: $(BUILD)/gen/migrations.c
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_BUILD)/libfuzz.a: $(FUZZ_OBJ)
	rm -f $@ && ar rcs $@ $^

$(FUZZ_BIN): $(FUZZ_BUILD)/%: tests/fuzz/%.c tests/fuzz/fuzz_util.h $(FUZZ_BUILD)/libfuzz.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $< -o $@ $(FUZZ_BUILD)/libfuzz.a $(DAEMON_LIBS) $(LDLIBS)

fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	  regs=$$(find tests/fuzz/regressions/$$t -type f 2>/dev/null | sort); \
	  if [ -n "$$regs" ]; then \
	    echo "fuzz $$t: replaying $$(echo "$$regs" | wc -l) regression inputs"; \
	    OMP_NUM_THREADS=1 $(FUZZ_BUILD)/$$t $$regs > $(FUZZ_BUILD)/$$t.regressions.log 2>&1 || \
	      { cat $(FUZZ_BUILD)/$$t.regressions.log; echo "fuzz $$t: a regression input fails again"; exit 1; }; \
	  fi; \
	  mkdir -p $(FUZZ_SCRATCH)/$$t $(FUZZ_SCRATCH)/crashes; \
	  dict=; [ -f tests/fuzz/$$t.dict ] && dict=-dict=tests/fuzz/$$t.dict; \
	  echo "fuzz $$t: $(FUZZ_SECONDS) s (log: $(FUZZ_BUILD)/$$t.log)"; \
	  OMP_NUM_THREADS=1 $(FUZZ_BUILD)/$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $$dict \
	    -artifact_prefix=$(FUZZ_SCRATCH)/crashes/$$t- $(FUZZ_SCRATCH)/$$t tests/fuzz/corpus/$$t \
	    > $(FUZZ_BUILD)/$$t.log 2>&1 || { tail -60 $(FUZZ_BUILD)/$$t.log; echo "fuzz $$t: FAILED"; exit 1; }; \
	  grep -aE '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb)' $(FUZZ_BUILD)/$$t.log | sed "s/^/  $$t: /"; \
	done

# Rewrites the binary seeds (images, safetensors) of tests/fuzz/corpus/.
.PHONY: fuzz-seeds
fuzz-seeds: $(BUILD)/libfisher.a
	$(CC) $(CFLAGS) -Itests/unit tests/fuzz/make_seeds.c -o $(BUILD)/make_seeds $(BUILD)/libfisher.a $(LDLIBS)
	mkdir -p tests/fuzz/corpus/image tests/fuzz/corpus/safetensors
	$(BUILD)/make_seeds tests/fuzz/corpus

# The short run `make test` makes: 20 s per target.
fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=20

test: deps
	$(MAKE) all
	$(MAKE) unit
	$(MAKE) integration
	$(MAKE) browser-test
	$(MAKE) unit-asan
	$(MAKE) fuzz-smoke

# Installs the daemon like any other: the binary in sbin (a daemon's, and
# `fisherd train | predict | eval` with it), the dashboard, the systemd unit,
# the man page fisherd(8), and the example configuration as
# $(SYSCONFDIR)/fisherd/fisherd.json unless one is there already (an upgrade
# keeps the operator's; the pristine copy is in $(DATADIR)/fisherd). The
# unit and the configuration name PREFIX's paths. DESTDIR stages it all
# under another root (packaging; tests/integration/test_install.py).
PREFIX     ?= /usr/local
SBINDIR    ?= $(PREFIX)/sbin
DATADIR    ?= $(PREFIX)/share
MANDIR     ?= $(DATADIR)/man
UNITDIR    ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR ?= /etc
INSTALL_PATHS := sed -e 's|/usr/local/sbin/|$(SBINDIR)/|g' -e 's|/usr/local/share/|$(DATADIR)/|g' \
                     -e 's|/etc/fisherd/|$(SYSCONFDIR)/fisherd/|g'

.PHONY: install uninstall
install: all web
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(DATADIR)/fisherd/web $(DESTDIR)$(MANDIR)/man8 \
	  $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/fisherd
	install -m 0755 $(BUILD)/fisherd $(DESTDIR)$(SBINDIR)/fisherd
	cd web && find . -name node_modules -prune -o -type f ! -name 'package*.json' ! -name README.md ! -name '.*' -print | \
	  while read -r f; do install -D -m 0644 "$$f" "$(DESTDIR)$(DATADIR)/fisherd/web/$$f" || exit 1; done
	install -m 0644 docs/fisherd.8 $(DESTDIR)$(MANDIR)/man8/fisherd.8
	$(INSTALL_PATHS) systemd/fisherd.service > $(DESTDIR)$(UNITDIR)/fisherd.service
	$(INSTALL_PATHS) systemd/fisherd.json > $(DESTDIR)$(DATADIR)/fisherd/fisherd.json
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/fisherd/fisherd.json ]; then \
	  echo "install: keeping $(DESTDIR)$(SYSCONFDIR)/fisherd/fisherd.json (the new example: $(DATADIR)/fisherd/fisherd.json)"; \
	else install -m 0644 $(DESTDIR)$(DATADIR)/fisherd/fisherd.json $(DESTDIR)$(SYSCONFDIR)/fisherd/fisherd.json; fi

# Removes what install put in place but the configuration and the data.
uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/fisherd $(DESTDIR)$(MANDIR)/man8/fisherd.8 $(DESTDIR)$(UNITDIR)/fisherd.service
	rm -rf $(DESTDIR)$(DATADIR)/fisherd

# The unit under a real systemd, PID 1 in a container (systemd-nspawn):
# it starts, trains a job inside the sandbox, is restarted by the watchdog
# when wedged and stops cleanly (tests/systemd/boot_check.py). Not part of
# `make test`: it needs root on a machine that can run containers.
.PHONY: systemd-check
systemd-check: all web
	@$(MAKE) --no-print-directory deps DEB_PKGS="systemd-container"
	rm -rf $(BUILD)/systemd-check
	$(MAKE) --no-print-directory install DESTDIR=$(abspath $(BUILD)/systemd-check)
	/usr/bin/python3 tests/systemd/boot_check.py $(BUILD)/systemd-check

# The daemon in the foreground on 127.0.0.1:8080, data in ./var (Ctrl-C
# stops it; jobs it was running continue at the next start).
run: deps
	$(MAKE) all
	$(MAKE) web
	$(BUILD)/fisherd serve --data-dir var --web-root web

# The training-step benchmark, C vs PyTorch, interleaved (minutes; pass
# BENCH_ARGS=--quick for a one-round look at the two small cases). The C half
# is compiled here, with the library's own CFLAGS and LDLIBS, so it links
# whatever the library needs; it is one file, so it is simply rebuilt.
bench: deps torch-deps
	$(MAKE) all
	mkdir -p $(BUILD)/bench
	$(CC) $(CFLAGS) $(MPI_CFLAGS) tests/bench/bench_step.c daemon/openmp_env.c daemon/cli.c daemon/mpi_comm.c -o $(BUILD)/bench/bench_step $(BUILD)/libfisher.a $(LDLIBS)
	/usr/bin/python3 tests/bench/step.py --bin $(BUILD)/bench/bench_step $(BENCH_ARGS)
	/usr/bin/python3 tests/bench/dp.py --bin $(BUILD)/bench/bench_step $(filter --quick,$(BENCH_ARGS))
	dpkg-query -W -f='$${Status}' wrk 2>/dev/null | grep -q 'ok installed' || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk; }; /usr/bin/python3 tests/bench/serve_bench.py --bin $(BUILD)/fisherd $(filter --quick,$(BENCH_ARGS))
	/usr/bin/python3 tests/bench/e2e.py --bin $(BUILD)/fisherd
	/usr/bin/python3 tests/bench/report.py --readme

# The store's read and write paths at the sizes DESIGN.md sets targets for
# (a 10k-point series, a 700 x 3000 heatmap, 700-value drift records).
bench-store: all
	mkdir -p $(BUILD)/bench
	$(CC) $(CFLAGS) -Idaemon tests/bench/bench_store.c -o $(BUILD)/bench/bench_store $(BUILD)/libfisherd.a $(BUILD)/libfisher.a $(DAEMON_LIBS) $(LDLIBS)
	$(BUILD)/bench/bench_store --baseline

# The paper's comparison through the daemon's REST API (issue 8): pretrain,
# fine-tune with every strategy over 3 seeds, zero-shot, the freezing
# hierarchy, a lambda x freeze_interval sweep; writes docs/RESULTS.md and
# docs/images/experiment-*.svg. ≤ 60 min on 2 quiet cores; QUICK=1 ≤ 5 min.
# EXPERIMENT_ARGS passes more (--data-root DIR --target FOLDER ..., --url).
.PHONY: experiment
experiment: all
	/usr/bin/python3 tests/bench/experiment.py --fisherd $(BUILD)/fisherd $(if $(filter-out 0,$(QUICK)),--quick) $(EXPERIMENT_ARGS)

# PyTorch is only the yardstick of the benchmark and the maker of the golden
# files: it stays out of `deps`, so `make test` and CI never pull it in.
torch-deps:
	@$(MAKE) --no-print-directory deps DEB_PKGS="python3-torch python3-numpy"

fixtures: torch-deps
	/usr/bin/python3 tests/parity/make_fixtures.py tests/parity/fixtures
	/usr/bin/python3 tests/parity/fisher_reference.py tests/parity/fixtures

clean:
	rm -rf build
