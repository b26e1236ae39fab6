#!/usr/bin/env bash
# The OHIF viewer's prebuilt static files (npm package @ohif/app, pinned), for
# `llnm-node demo --viewer` and tests/test_viewer.py: the tarball only (no dependency is
# installed), its integrity checked, its dist/ extracted to .viewer/ohif-VERSION/ (git-ignored).
# Idempotent: nothing is fetched when that folder is there. Nothing is downloaded at run time.
set -euo pipefail
cd "$(dirname "$0")/.."

OHIF_VERSION=3.13.2
OHIF_INTEGRITY=sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==
target=.viewer/ohif-$OHIF_VERSION
[ -f "$target/index.html" ] && exit 0

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
tarball=$(cd "$scratch" && npm pack --silent "@ohif/app@$OHIF_VERSION")
actual="sha512-$(openssl dgst -sha512 -binary "$scratch/$tarball" | base64 -w0)"
if [ "$actual" != "$OHIF_INTEGRITY" ]; then
  echo "@ohif/app@$OHIF_VERSION: integrity $actual, expected $OHIF_INTEGRITY" >&2
  exit 1
fi
tar -xzf "$scratch/$tarball" -C "$scratch" package/dist
rm -rf "$target.partial"
mkdir -p .viewer
mv "$scratch/package/dist" "$target.partial"
mv "$target.partial" "$target"
