#!/usr/bin/env bash
# Mutation score of the science packages (issue #30 item 5), measured with mutmut 3.8.1.
#
#   benchmarks/mutation.sh [PACKAGE ...]      # default: every package below
#   CAP_S=1200 benchmarks/mutation.sh train   # per-package wall-clock cap (default 1800 s)
#   FULL=1 benchmarks/mutation.sh bench       # whole package, not only its formula modules
#   RERUN=1 benchmarks/mutation.sh bench      # keep the last run's mutants; refresh tests/ from the
#                                             # working tree and rerun only its survivors
#   RESUME=1 benchmarks/mutation.sh purify    # keep the last run's results; refresh tests/ and run the
#                                             # mutants a capped run did not reach
#   WITHOUT=tests/test_pinned_values.py benchmarks/mutation.sh purify   # leave test files out (a baseline)
#   RERUN=1 ONLY='pixverve.train.models.*,pixverve.train.patterns.*' benchmarks/mutation.sh train
#                                             # RERUN only the survivors whose names match (fnmatch);
#                                             # with RESUME=1 or a fresh run: every mutant whose name matches
#   ONLY='pixverve.train.models.xǁWindow*' benchmarks/mutation.sh train   # one class's methods, fresh
#
# After a FULL=1 run, RERUN=1 / RESUME=1 were seen to rerun only one module's survivors and to drop the
# other modules' results (session 13): for final numbers, a fresh run with ONLY= is the reliable way.
# A RERUN first maps the tests to functions again (every selected test once): minutes before any mutant.
#
# Not a CI job: hours of CPU for all packages (each mutant re-runs the tests that reach the mutated
# function).  Nothing here touches the working tree: each package runs in its own copy under
# $WORK (default /tmp/pixverve-mutation/<package>), made from the working tree's tracked and
# untracked (not ignored) files; mutmut's own venv is $WORK/venv (benchmarks/mutation-requirements.txt,
# plus a .pth to the project's .venv).  Per package: the modules holding the published formulas and
# thresholds (FULL=1: every module), the fast unit test files that cover them (no e2e, Snakemake,
# browser, SLURM or deploy tests), run under `nice -n 19` with one worker.  A run cut by the cap
# reports how many of the package's mutants it ran.  Prints a table, and per package the survivors
# (`cd $WORK/<package> && $WORK/venv/bin/mutmut show NAME` shows a mutant's diff).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${WORK:-/tmp/pixverve-mutation}
CAP_S=${CAP_S:-1800}
FULL=${FULL:-0}
VENV=$WORK/venv
mkdir -p "$WORK"
if [[ ! -x $VENV/bin/mutmut ]]; then
    "$ROOT/.venv/bin/python" -m venv "$VENV"
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    proj=$("$ROOT/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$proj" > "$site/zz_pixverve_project.pth"  # after mutmut's own packages
    "$VENV/bin/pip" install -q -r benchmarks/mutation-requirements.txt > "$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log"; exit 1; }
fi
RERUN=${RERUN:-0}
RESUME=${RESUME:-0}
WITHOUT=${WITHOUT:-}
ONLY=${ONLY:-}
export ROOT WORK CAP_S FULL VENV RERUN RESUME WITHOUT ONLY
exec "$VENV/bin/python" - "$@" <<'PY'
import fnmatch, os, re, shutil, subprocess, sys, time
from collections import Counter
from pathlib import Path

ROOT, WORK, VENV = Path(os.environ["ROOT"]), Path(os.environ["WORK"]), Path(os.environ["VENV"])
CAP_S, FULL = int(os.environ["CAP_S"]), os.environ["FULL"] == "1"
RERUN = os.environ.get("RERUN", "0") == "1"
RESUME = os.environ.get("RESUME", "0") == "1"
WITHOUT = set(filter(None, os.environ.get("WITHOUT", "").split(",")))
ONLY = list(filter(None, os.environ.get("ONLY", "").split(",")))

# package: (formula modules, whole-package glob, fast unit test files that cover it)
PACKAGES = {
    # core: the tiling and the fail-safe policy (health.py: which statuses keep an image out, the job gates)
    "core": (["pixverve/core/tiling.py", "pixverve/core/health.py"], "pixverve/core/*",
             ["tests/test_upscale.py", "tests/test_verify.py", "tests/test_images.py", "tests/test_failsafe.py",
              "tests/test_bench_failsafe.py", "tests/test_pinned_values.py"]),
    "purify": (["pixverve/purify/classical.py"], "pixverve/purify/*",
               ["tests/test_purify.py", "tests/test_aesthetics.py", "tests/test_pinned_values.py"]),
    "verify": (["pixverve/verify/fidelity.py"], "pixverve/verify/*",
               ["tests/test_verify.py", "tests/test_regions.py", "tests/test_pinned_values.py"]),
    # evaluate.py (914 lines, 2650 mutants, most in table/report writing) only with FULL=1: mutmut runs the
    # mutants with the fastest tests first, and evaluate's crowd the formula modules out of a capped run
    "bench": (["pixverve/bench/scores.py", "pixverve/bench/fid.py", "pixverve/bench/glcm.py"], "pixverve/bench/*",
              ["tests/test_bench_scores.py", "tests/test_fid.py", "tests/test_glcm.py", "tests/test_bench_inputs.py", "tests/test_bench.py",
               "tests/test_bench_failsafe.py", "tests/test_pinned_values.py"]),
    "train": (["pixverve/train/models.py", "pixverve/train/patterns.py", "pixverve/train/loop.py"], "pixverve/train/*",
              ["tests/test_train.py", "tests/test_train_data.py", "tests/test_checkpoints.py", "tests/test_pinned_values.py"]),
    "upscale": (["pixverve/upscale/sr.py"], "pixverve/upscale/*",
                ["tests/test_upscale.py", "tests/test_sd_x4.py", "tests/test_pinned_values.py"]),
    # caption: the Rex-Omni box parser and tag matching, and the core view helpers stage 5 uses (box / mask
    # NMS, RLE, view-to-canvas boxes); steps.py (the chain's bookkeeping) only with FULL=1
    "caption": (["pixverve/caption/models.py", "pixverve/core/views.py"], "pixverve/caption/*",
                ["tests/test_annotate.py", "tests/test_caption.py", "tests/test_failsafe.py", "tests/test_pinned_values.py"]),
}
# tests of other work in progress to leave out of a package's run (the clean run must pass)
EXTRA_PYTEST = {
    # train: the slow end-to-end training tests (4-16 s each, the fast ones take ~15 s together; the
    # overfit-one-batch schemes 21-68 s each and the resume test 14 s under nice on this 2-core machine) and
    # the Snakemake dry run (a subprocess that hits mutmut's trampolines outside its folder)
    "train": ["-k", "not overfits_one_batch"
              " and not resume_continues and not two_processes and not checkpoints_in_either_names"
              " and not sequential_loading and not l2p_trains_with_bf16 and not reload_that_misses"
              " and not lora_file_fuses and not 1x1_is_full_attention and not paper_config_train_rules_dry_run"],
    # upscale: the real Real-ESRGAN runs and the memory test (11-50 s each; they check weights and memory, not
    # the tiling formulas, which core/tiling.py's run covers)
    "upscale": ["-k", "not real_esrgan_through_the_engine and not real_esrgan_weights_from_the_wheel"
                " and not memory_is_bounded_by_the_band"],
    "core": ["-k", "not test_retry_"],  # the retry command's subprocess (see caption)
    # caption: the tiny-model runs of the tagger / detector wrappers (8-12 s each) and the retry command's
    # tests (a `python -m pixverve retry` subprocess, which hits mutmut's trampolines outside its folder)
    "caption": ["-k", "not tiny_models_run_the_real_code_paths and not grounding_dino_splits_a_long_tag_list"
                " and not test_retry_"],
}
# numba-compiled kernels cannot run through mutmut's trampolines; their pure-Python twins are mutated
NEVER = ["pixverve/bench/glcm_kernel.py"]

wanted = sys.argv[1:] or list(PACKAGES)
unknown = [p for p in wanted if p not in PACKAGES]
if unknown:
    sys.exit(f"unknown package(s) {unknown}; known: {list(PACKAGES)}")

files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                       capture_output=True).stdout.decode().split("\0")
files = [f for f in files if f and (ROOT / f).is_file()]
top = sorted({f.split("/")[0] for f in files} - {"pixverve", "tests", "pyproject.toml"})


def toml_list(items):
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


rows, by_module = [], []
for pkg in wanted:
    modules, glob, tests = PACKAGES[pkg]
    tests = [t for t in tests if (ROOT / t).exists() and t not in WITHOUT]
    work = WORK / pkg
    if RERUN or RESUME:
        again = [line.split("\t")[0] for line in (work / "survivors.txt").read_text().splitlines() if line]
        again = [n for n in again if not ONLY or any(fnmatch.fnmatch(n, p) for p in ONLY)]
        # no names: mutmut runs only the mutants without a result; RESUME with ONLY: every mutant matching
        # (mutmut reruns named mutants, those with a result too)
        again = again if RERUN else ONLY
        if RERUN and not again:
            sys.exit(f"{pkg}: no survivors to rerun (ONLY={ONLY})")
        for f in files:
            if f.startswith("tests/"):
                for dest in (work / f, work / "mutants" / f):
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / f, dest)
        for stale in (work / "mutants").glob("mutmut-stats.json"):
            stale.unlink()  # new tests: map tests to functions again
    else:
        again = ONLY  # a fresh run with ONLY: only the mutants whose names match
        shutil.rmtree(work, ignore_errors=True)
        for f in files:
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, work / f)
    py = (ROOT / "pyproject.toml").read_text()
    py = re.sub(r'^pythonpath = .*\n', "", py, flags=re.M)  # mutmut puts mutants/ first on sys.path itself
    py += f"""
[tool.mutmut]
source_paths = ["pixverve"]
only_mutate = {toml_list([glob] if FULL else modules)}
do_not_mutate = {toml_list(NEVER)}
also_copy = {toml_list(top)}
pytest_add_cli_args = {toml_list(["-p", "no:cacheprovider", "-m", "not e2e", "-q", "-x"] + EXTRA_PYTEST.get(pkg, []))}
pytest_add_cli_args_test_selection = {toml_list(tests)}
"""
    (work / "pyproject.toml").write_text(py)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MKL_NUM_THREADS="1")
    start = time.time()
    log = open(work / "mutmut-run.log", "w")
    proc = subprocess.run(["timeout", "-k", "30", str(CAP_S), "nice", "-n", "19", str(VENV / "bin/mutmut"), "run",
                           "--max-children", "1", *again], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    took = time.time() - start
    res = subprocess.run([str(VENV / "bin/mutmut"), "results", "--all", "true"], cwd=work, env=env,
                         capture_output=True, text=True)
    status = {}
    for line in res.stdout.splitlines():
        m = re.match(r"\s+(\S+): (.+)$", line)
        if m:
            status[m.group(1)] = m.group(2).strip()
    counts = Counter(status.values())
    ran = sum(v for k, v in counts.items() if k not in ("not checked",))
    killed, survived = counts["killed"], counts["survived"]
    timeout, suspicious = counts["timeout"], counts["suspicious"]
    untested = counts["no tests"]
    score = killed + timeout
    denom = killed + survived + timeout + untested
    rows.append((pkg, len(status), ran, killed, survived, timeout, suspicious, untested,
                 f"{100 * score / denom:.0f}%" if denom else "-", f"{took:.0f}s",
                 "cap" if proc.returncode in (124, 137) else ("ok" if proc.returncode == 0 else f"rc {proc.returncode}")))
    for module in sorted({re.split(r"\.x(?:_|\u01c1)", k)[0] for k in status}):
        c = Counter(v for k, v in status.items() if re.split(r"\.x(?:_|\u01c1)", k)[0] == module)
        d = c["killed"] + c["survived"] + c["timeout"] + c["no tests"]
        by_module.append((module, sum(c.values()), sum(c.values()) - c["not checked"], c["killed"], c["survived"],
                          c["timeout"], c["suspicious"], c["no tests"],
                          f"{100 * (c['killed'] + c['timeout']) / d:.0f}%" if d else "-"))
    surv = sorted(k for k, v in status.items() if v in ("survived", "no tests"))
    (work / "survivors.txt").write_text("".join(f"{k}\t{status[k]}\n" for k in surv))
    print(f"{pkg}: {len(surv)} survivors / untested -> {work}/survivors.txt; log {work}/mutmut-run.log", flush=True)

head = ("package", "mutants", "run", "killed", "survived", "timeout", "suspicious", "no tests", "score", "time", "end")
print()
print(" | ".join(head))
print(" | ".join("---" for _ in head))
for r in rows:
    print(" | ".join(str(x) for x in r))
print("\nscore = (killed + timeout) / (killed + survived + timeout + no tests), over the mutants run; suspicious"
      " (far slower than the clean run, e.g. numba compiling again in each forked mutant) is left out")
print()
head = ("module", "mutants", "run", "killed", "survived", "timeout", "suspicious", "no tests", "score")
print(" | ".join(head))
print(" | ".join("---" for _ in head))
for r in by_module:
    print(" | ".join(str(x) for x in r))
PY
