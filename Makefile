# NVI's build. The README's two commands are scripts/tour and scripts/test;
# these targets are what they (and developers) call.

SHELL    := /bin/bash
GO       ?= go
BIN      := bin
PKGS     := ./...
FUZZTIME ?= 20000x

.PHONY: build test check unit e2e fuzz vet fmt bench bench-deps tour clean

build:
	$(GO) build -o $(BIN)/ ./cmd/nvid ./cmd/nvictl ./cmd/nvi-cni ./cmd/nvi-docker

# Everything CI runs.
check: fmt vet unit e2e fuzz

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

# Unit and package tests (real OVS and etcd where a package needs them), with
# the race detector. The end-to-end lab tests run separately, below.
unit:
	NVI_REQUIRE_OVS=1 $(GO) test -race -count=1 $$($(GO) list $(PKGS) | grep -v /e2e)

# The end-to-end tests need root; here a skip is a failure.
e2e: build
	NVI_REQUIRE_E2E=1 $(GO) test -count=1 -timeout 40m -v ./e2e/

# A short run of every fuzz target (go test runs one target at a time), one
# fuzzing worker each so that a 2-core machine is not oversubscribed. A
# failing input is saved under the package's testdata/fuzz and replayed by
# every later "go test"; the log is shown on failure. The budget is a count
# of inputs, not a duration: a duration races Go's fuzzing coordinator at
# its deadline, which then fails a target with "context deadline exceeded"
# and no input at all (most often on a loaded machine). 20,000 inputs take
# 1-25 s per target here.
fuzz:
	@for pkg in $$($(GO) list $(PKGS)); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
			echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
			log=$$(mktemp); \
			if ! $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -parallel 1 $$pkg >$$log 2>&1; then \
				echo "FAIL: fuzz $$pkg $$f"; tail -40 $$log; rm -f $$log; exit 1; \
			fi; \
			rm -f $$log; \
		done; \
	done

# The benchmark measures OVN beside NVI; what it needs (OVN, iperf3) is
# installed when missing, with no system-wide daemons left running.
bench-deps:
	./scripts/deps --bench

bench: bench-deps build
	$(GO) build -o $(BIN)/ ./cmd/nvibench
	$(BIN)/nvibench

tour: build
	./scripts/tour.sh

clean:
	rm -rf $(BIN)
