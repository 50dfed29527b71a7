#!/usr/bin/env bash
# ONNX Runtime's C/C++ headers for the native runtime's ort-cpu backend, into build/onnxruntime-headers.
# The onnxruntime wheel ships libonnxruntime.so without headers; Debian trixie's libonnxruntime-dev
# carries them (the C API is versioned, so older headers work with the wheel's newer library).
# Downloads that one .deb with a private apt configuration (the system's sources are not touched).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=build/onnxruntime-headers
[ -f "$dest/onnxruntime/onnxruntime_cxx_api.h" ] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
echo "deb http://deb.debian.org/debian trixie main" > "$work/sources.list"
opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$work/lists"
      -o "Dir::Cache=$work/cache" -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
apt-get "${opts[@]}" update -qq >/dev/null
(cd "$work" && apt-get "${opts[@]}" download -qq libonnxruntime-dev >/dev/null)
dpkg-deb -x "$work"/libonnxruntime-dev_*.deb "$work/x"
mkdir -p "$dest"
cp -r "$work/x/usr/include/onnxruntime" "$dest/"
echo "ONNX Runtime headers in $dest ($(basename "$work"/libonnxruntime-dev_*.deb))"
