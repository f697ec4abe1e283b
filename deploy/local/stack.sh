#!/usr/bin/env bash
# The local stack: single-node Apache Kafka (KRaft, jars from Maven Central) and redis-server,
# both on loopback, plus optionally one consumer. No Docker, no systemd: plain processes
# tracked by PID files under .run/ so `down` stops exactly what `up` started.
#
#   stack.sh up | down | status
#   stack.sh deps                       install/fetch Java, Maven, Kafka jars, redis-server
#   stack.sh test-deps                  deps, a JDK and Maven for the Java interop clients,
#                                       the Go interop clients' modules, and build the S3
#                                       server the s3:// tests read from and kustomize
#                                       (needs Go; `up` and the demo do not)
#   stack.sh s3-bin                     print that S3 server's path (building it if needed)
#   stack.sh kustomize-bin              print the path of kustomize (built with Go, cached),
#                                       which the tests render deploy/k8s with
#   stack.sh keycloak-home              print the Keycloak distribution's folder (fetched
#                                       from Maven Central, cached), the tests' OAuth IdP
#   stack.sh keycloak-java-home         print the JAVA_HOME of a Java 21+ for Keycloak
#   stack.sh kill-kafka | start-kafka   SIGKILL / restart the broker (fault tests)
#   stack.sh kill-redis | start-redis   SIGKILL / restart Redis (fault tests)
#   stack.sh wipe-redis                 SIGKILL Redis and delete its data: the next
#                                       start-redis comes up empty (state-loss fault tests)
#   stack.sh start-consumer | stop-consumer
#   stack.sh start-gateway | stop-gateway   ocr-gateway on 127.0.0.1:$OCR_GATEWAY_PORT
#
# Environment (defaults in brackets):
#   OCR_KAFKA_BOOTSTRAP [127.0.0.1:9092]   broker listener (first entry; loopback only)
#   OCR_KAFKA_CONTROLLER_PORT [bootstrap port + 1]
#   OCR_KAFKA_VERSION [4.1.1]              org.apache.kafka:kafka_2.13 version
#   OCR_KAFKA_JAVA_OPTS [-Xms128m -Xmx512m]
#   OCR_KAFKA_START_TIMEOUT [120]          seconds `up` waits for the broker to answer
#   OCR_CACHE_DIR [~/.cache/ocr-stream]    where the Kafka jars and the S3 server are cached
#   OCR_VERSITYGW_VERSION [v1.8.0]         github.com/versity/versitygw, built with Go
#   OCR_KUSTOMIZE_VERSION [v5.8.1]         sigs.k8s.io/kustomize/kustomize/v5, built with Go
#   OCR_KEYCLOAK_VERSION [26.5.6]          org.keycloak:keycloak-quarkus-dist (tests only)
#   OCR_KEYCLOAK_JAVA_HOME                 a Java 21+ for Keycloak (found if unset; the
#                                          broker and the Java clients stay on `java`)
#   OCR_REDIS_URL [redis://127.0.0.1:6379/0], OCR_REDIS_PASSWORD (sets requirepass)
#   OCR_STACK_CONSUMER [1]                 `up` also starts .venv/bin/ocr-consumer --engine auto
#   OCR_ARTIFACTS_URI [.run/artifacts]     that consumer's figure store ('' turns it off)
#   OCR_STACK_GATEWAY [= OCR_STACK_CONSUMER]  `up` also starts .venv/bin/ocr-gateway
#   OCR_GATEWAY_HOST [127.0.0.1], OCR_GATEWAY_PORT [8080]  where that gateway listens
#   OCR_PYTHON [.venv/bin/python, else python3]  runs `python -m producer_tools.topics`
#   OCR_RUN_DIR [.run]                     PID files, logs and data of this stack
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# One stack per run directory: a second stack (other ports) for a parallel session gets its
# own OCR_RUN_DIR so the two never read each other's PID files.
RUN=${OCR_RUN_DIR:-$REPO/.run}
KAFKA_DIR="$REPO/deploy/local/kafka"

KAFKA_VERSION=${OCR_KAFKA_VERSION:-4.1.1}
CACHE_DIR=${OCR_CACHE_DIR:-$HOME/.cache/ocr-stream}
KAFKA_LIBS="$CACHE_DIR/kafka-$KAFKA_VERSION/libs"
KAFKA_JAVA_OPTS=${OCR_KAFKA_JAVA_OPTS:--Xms128m -Xmx512m}
KAFKA_START_TIMEOUT=${OCR_KAFKA_START_TIMEOUT:-120}
STACK_CONSUMER=${OCR_STACK_CONSUMER:-1}
STACK_GATEWAY=${OCR_STACK_GATEWAY:-$STACK_CONSUMER}
# The tests' S3 server: Versity's S3 gateway (Apache-2.0) over a directory, built from the Go
# module proxy once per cache. Not part of the stack's `up`: tests start their own.
VERSITYGW_VERSION=${OCR_VERSITYGW_VERSION:-v1.8.0}
VERSITYGW_BIN="$CACHE_DIR/versitygw-$VERSITYGW_VERSION/versitygw"
# The real kustomize (kubectl's -k), so the tests render deploy/k8s as `kubectl apply -k`
# does. v5.8.1: v5.8.2 and later need Go 1.27.
KUSTOMIZE_VERSION=${OCR_KUSTOMIZE_VERSION:-v5.8.1}
KUSTOMIZE_BIN="$CACHE_DIR/kustomize-$KUSTOMIZE_VERSION/kustomize"
# The OAuth identity provider of the Kafka security tests (tests/support/keycloak.py): the
# Keycloak server distribution from Maven Central, unpacked once per cache.
KEYCLOAK_VERSION=${OCR_KEYCLOAK_VERSION:-26.5.6}
KEYCLOAK_HOME="$CACHE_DIR/keycloak-$KEYCLOAK_VERSION"

if [[ -n "${OCR_PYTHON:-}" ]]; then
    PYTHON=$OCR_PYTHON
elif [[ -x "$REPO/.venv/bin/python" ]]; then
    PYTHON="$REPO/.venv/bin/python"
else
    PYTHON=python3
fi

say() { echo "stack: $*"; }
die() { echo "stack: error: $*" >&2; exit 1; }

# Only the loopback interface: the stack has no authentication, so it must not be reachable
# from another machine.
loopback_host() {
    case "$1" in
        localhost) echo 127.0.0.1 ;;
        127.*) echo "$1" ;;
        *) die "$2 host '$1' is not a loopback address; the local stack listens on 127.0.0.1 only" ;;
    esac
}

BOOTSTRAP=${OCR_KAFKA_BOOTSTRAP:-127.0.0.1:9092}
BOOTSTRAP_FIRST=${BOOTSTRAP%%,*}
[[ "$BOOTSTRAP_FIRST" =~ ^([^:]+):([0-9]+)$ ]] \
    || die "OCR_KAFKA_BOOTSTRAP '$BOOTSTRAP' is not host:port"
KAFKA_HOST=$(loopback_host "${BASH_REMATCH[1]}" OCR_KAFKA_BOOTSTRAP)
KAFKA_PORT=${BASH_REMATCH[2]}
CONTROLLER_PORT=${OCR_KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}

REDIS_URL=${OCR_REDIS_URL:-redis://127.0.0.1:6379/0}
[[ "$REDIS_URL" =~ ^redis://([^@/]*@)?([^:/@]+)(:([0-9]+))?(/[0-9]*)?$ ]] \
    || die "OCR_REDIS_URL '$REDIS_URL' is not redis://host[:port][/db] (the local stack has no TLS)"
REDIS_HOST=$(loopback_host "${BASH_REMATCH[2]}" OCR_REDIS_URL)
REDIS_PORT=${BASH_REMATCH[4]:-6379}

# Empty when not loopback: start_gateway refuses then (other commands do not care).
GATEWAY_HOST=$(loopback_host "${OCR_GATEWAY_HOST:-127.0.0.1}" OCR_GATEWAY_HOST 2>/dev/null || echo "")
GATEWAY_PORT=${OCR_GATEWAY_PORT:-8080}

# --- processes ------------------------------------------------------------------------------

# The PID in .run/<name>.pid if that process is alive and still the one we started: a PID
# reused by an unrelated process after a reboot must never be signalled.
live_pid() {
    local name=$1 marker=$2 pid state
    [[ -f "$RUN/$name.pid" ]] || return 1
    pid=$(<"$RUN/$name.pid")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    # A killed child that nobody reaped yet still answers kill -0; it is gone for our purposes.
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo Z)
    [[ "$state" != Z ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$marker" || return 1
    echo "$pid"
}

# For a process we just started: alive and not a zombie. Not live_pid: until the forked
# shell has exec'd, its command line lacks the marker (a start under load failed so).
still_starting() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || echo Z)
    [[ "$state" != Z ]]
}

wait_gone() {
    local name=$1 marker=$2 seconds=$3 i
    for ((i = 0; i < seconds * 10; i++)); do
        live_pid "$name" "$marker" >/dev/null || return 0
        sleep 0.1
    done
    return 1
}

# SIGTERM, wait up to $3 seconds, then SIGKILL; $4=KILL skips the polite part.
stop_process() {
    local name=$1 marker=$2 grace=$3 signal=${4:-TERM} pid
    if ! pid=$(live_pid "$name" "$marker"); then
        rm -f "$RUN/$name.pid"
        return 0
    fi
    if [[ "$signal" == TERM ]]; then
        say "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_gone "$name" "$marker" "$grace"; then
            say "$name (pid $pid) still running after ${grace}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    else
        say "killing $name (pid $pid) with SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait_gone "$name" "$marker" 10 || die "$name (pid $pid) did not exit"
    # Dead is enough to go on, but give init a moment to reap it so that a `ps` right after
    # `down` shows nothing at all.
    local i
    for ((i = 0; i < 30; i++)); do
        [[ -e /proc/$pid ]] || break
        sleep 0.1
    done
    rm -f "$RUN/$name.pid"
}

port_open() {
    timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

log_tail() {
    echo "---- last lines of $1 ----" >&2
    tail -n "${2:-30}" "$1" >&2 2>/dev/null || true
    echo "---- (full log: $1) ----" >&2
}

# --- dependencies ---------------------------------------------------------------------------

apt_install() {
    command -v apt-get >/dev/null || die "missing $*; install it (no apt-get here)"
    local sudo=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "missing $*; install it as root (apt-get install $*)"
        sudo=sudo
    fi
    say "installing $* with apt-get"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

java_major() {
    java -version 2>&1 | awk -F '"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}'
}

ensure_java() {
    if ! command -v java >/dev/null; then
        apt_install openjdk-17-jre-headless
    fi
    local major
    major=$(java_major)
    # Kafka 4.x brokers need Java 17.
    [[ "${major:-0}" -ge 17 ]] || die "Kafka $KAFKA_VERSION needs Java 17 or newer; found '$major'"
}

# The interop tests compile small Java clients (javac) and fetch the CloudEvents Java SDK
# (Maven); the broker itself needs only a JRE.
ensure_interop_tools() {
    command -v javac >/dev/null || apt_install openjdk-17-jdk-headless
    command -v mvn >/dev/null || apt_install maven
}

ensure_kafka_libs() {
    if [[ -f "$KAFKA_LIBS/.complete" ]]; then
        return 0
    fi
    ensure_java
    command -v mvn >/dev/null || apt_install maven
    say "fetching Kafka $KAFKA_VERSION from Maven Central into $KAFKA_LIBS"
    local staging="$KAFKA_LIBS.partial.$$"
    rm -rf "$staging"
    mkdir -p "$staging"
    local started=$SECONDS
    # A staging directory renamed at the end: an interrupted fetch never looks complete.
    if ! mvn -q -B -Dstyle.color=never -f "$KAFKA_DIR/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$staging"; then
        rm -rf "$staging"
        die "Maven could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION"
    fi
    touch "$staging/.complete"
    rm -rf "$KAFKA_LIBS"
    mv "$staging" "$KAFKA_LIBS"
    say "fetched $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars in $((SECONDS - started))s"
}

ensure_redis() {
    command -v redis-server >/dev/null || apt_install redis-server
}

# The gateway's browser test drives Debian's chromium through Playwright's system-browser
# mode; no browser is ever downloaded.
ensure_chromium() {
    if command -v chromium >/dev/null; then
        return 0
    fi
    apt_install chromium
}

# go_build_cached BIN PACKAGE@VERSION WHAT: `go install` from the Go module proxy into the
# cache, once; a half-built binary never takes BIN's place.
go_build_cached() {
    local bin=$1 package=$2 what=$3
    if [[ -x "$bin" ]]; then
        return 0
    fi
    command -v go >/dev/null || die "building $what needs Go (1.24 or newer): install it, or put the binary at $bin"
    say "building $package with $(go version | awk '{print $3}') into $bin"
    local staging="$bin.partial.$$" started=$SECONDS
    rm -rf "$staging"
    mkdir -p "$staging"
    if ! GOBIN="$staging" GOFLAGS=-mod=mod go install "$package"; then
        rm -rf "$staging"
        die "go install $package failed"
    fi
    mkdir -p "$(dirname "$bin")"
    mv "$staging/$(basename "$bin")" "$bin"
    rm -rf "$staging"
    say "built $(basename "$bin") in $((SECONDS - started))s"
}

ensure_s3_server() {
    go_build_cached "$VERSITYGW_BIN" "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION" \
        "the tests' S3 server"
}

ensure_kustomize() {
    go_build_cached "$KUSTOMIZE_BIN" "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" \
        "kustomize (the tests render deploy/k8s with it)"
}

# A JAVA_HOME whose java is 21 or newer (Keycloak 26 needs it; Kafka runs on the default
# java, 17 is enough there): OCR_KEYCLOAK_JAVA_HOME, else JAVA_HOME, else the default
# java, else any JDK under /usr/lib/jvm, else Debian's openjdk-21 where apt has it.
java_home_major() {
    "$1/bin/java" -version 2>&1 \
        | awk -F '"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}'
}

find_keycloak_java_home() {
    local candidate major
    if [[ -n "${OCR_KEYCLOAK_JAVA_HOME:-}" ]]; then
        major=$(java_home_major "$OCR_KEYCLOAK_JAVA_HOME" 2>/dev/null || true)
        [[ "${major:-0}" -ge 21 ]] \
            || die "OCR_KEYCLOAK_JAVA_HOME=$OCR_KEYCLOAK_JAVA_HOME is not a Java 21 or newer (found '${major:-no java}')"
        echo "$OCR_KEYCLOAK_JAVA_HOME"
        return 0
    fi
    local default=""
    if command -v java >/dev/null; then
        default=$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")
    fi
    for candidate in "${JAVA_HOME:-}" "$default" /usr/lib/jvm/*; do
        [[ -n "$candidate" && -x "$candidate/bin/java" ]] || continue
        major=$(java_home_major "$candidate" 2>/dev/null || true)
        if [[ "${major:-0}" -ge 21 ]]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

ensure_keycloak_java() {
    local home
    if home=$(find_keycloak_java_home); then
        echo "$home"
        return 0
    fi
    if command -v apt-cache >/dev/null && apt-cache show openjdk-21-jdk-headless >/dev/null 2>&1; then
        apt_install openjdk-21-jdk-headless >&2
        if home=$(find_keycloak_java_home); then
            echo "$home"
            return 0
        fi
    fi
    die "Keycloak $KEYCLOAK_VERSION (the OAuth tests' identity provider) needs Java 21 or newer, and none was found (java on PATH is $(java_major 2>/dev/null || echo none); /usr/lib/jvm has $(ls /usr/lib/jvm 2>/dev/null | tr '\n' ' ')). Install one: 'apt-get install openjdk-21-jdk-headless' where your release has it (Debian 13, Ubuntu 24.04), else Eclipse Temurin 21 or 25 (https://adoptium.net/installation/linux/: apt-get install temurin-21-jdk), then run this again or set OCR_KEYCLOAK_JAVA_HOME to its folder"
}

# The Keycloak server distribution (a zip on Maven Central), unpacked into the cache; a
# staging folder renamed at the end, so an interrupted fetch never looks complete. The
# tests start it from a copy of its small folders (tests/support/keycloak.py), never here.
ensure_keycloak() {
    if [[ -f "$KEYCLOAK_HOME/.complete" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || apt_install maven
    command -v unzip >/dev/null || apt_install unzip
    say "fetching Keycloak $KEYCLOAK_VERSION from Maven Central into $KEYCLOAK_HOME"
    local staging="$KEYCLOAK_HOME.partial.$$" started=$SECONDS
    rm -rf "$staging"
    mkdir -p "$staging/zip"
    if ! mvn -q -B -Dstyle.color=never dependency:copy \
        -Dartifact="org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:zip" \
        -DoutputDirectory="$staging/zip"; then
        rm -rf "$staging"
        die "Maven could not fetch org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:zip"
    fi
    unzip -q "$staging/zip/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip" -d "$staging/zip" \
        || { rm -rf "$staging"; die "unpacking the Keycloak zip failed"; }
    mv "$staging/zip/keycloak-$KEYCLOAK_VERSION" "$staging/dist"
    rm -rf "$staging/zip"
    mv "$staging/dist"/* "$staging/dist"/.[!.]* "$staging/" 2>/dev/null || true
    rmdir "$staging/dist" 2>/dev/null || true
    [[ -x "$staging/bin/kc.sh" ]] || { rm -rf "$staging"; die "the Keycloak zip has no bin/kc.sh"; }
    touch "$staging/.complete"
    rm -rf "$KEYCLOAK_HOME"
    mv "$staging" "$KEYCLOAK_HOME"
    say "fetched Keycloak $KEYCLOAK_VERSION in $((SECONDS - started))s"
}

# The Go interop clients (tests/support/go: franz-go, kafka-go, sarama at the versions its
# go.sum pins), from the Go module proxy into Go's module cache; the tests build the program
# from there once (tests/support/go.py caches it under $CACHE_DIR).
ensure_go_interop_modules() {
    command -v go >/dev/null || die "the Go interop tests need Go (1.26 or newer): install it"
    local started=$SECONDS
    (cd "$REPO/tests/support/go" && go mod download) \
        || die "go mod download in tests/support/go failed"
    ((SECONDS - started < 2)) || say "downloaded the Go interop modules in $((SECONDS - started))s"
}

deps() {
    ensure_java
    ensure_kafka_libs
    ensure_redis
    say "dependencies ready: Java $(java_major), Kafka $KAFKA_VERSION, $(redis-server --version | awk '{print $3}')"
}

# --- Kafka ----------------------------------------------------------------------------------

KAFKA_DATA="$RUN/kafka-data"
KAFKA_PROPS="$RUN/kafka-server.properties"
KAFKA_LOG="$RUN/kafka.log"
KAFKA_MARKER="kafka.Kafka"

read -r -a KAFKA_JAVA_FLAGS <<<"$KAFKA_JAVA_OPTS"
KAFKA_JVM=(java "${KAFKA_JAVA_FLAGS[@]}" -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" -cp "$KAFKA_LIBS/*")

render_kafka_props() {
    sed -e "s|@HOST@|$KAFKA_HOST|g" -e "s|@BROKER_PORT@|$KAFKA_PORT|g" \
        -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" -e "s|@DATA_DIR@|$KAFKA_DATA|g" \
        "$KAFKA_DIR/server.properties.template" >"$KAFKA_PROPS"
}

format_kafka_storage() {
    if [[ -f "$KAFKA_DATA/meta.properties" ]]; then
        return 0
    fi
    local cluster_id=""
    if [[ -s "$RUN/kafka-cluster-id" ]]; then
        cluster_id=$(<"$RUN/kafka-cluster-id")
    fi
    # What `kafka-storage.sh random-uuid` prints (16 random bytes, URL-safe base64, no
    # padding), without starting a JVM for it. Like Kafka's own Uuid.randomUuid, never one
    # that starts with '-': the storage tool would read it as an option and refuse it (one
    # id in 64; a saved one from before this rule was never formatted, so it is replaced).
    while [[ -z $cluster_id || $cluster_id == -* ]]; do
        cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    done
    echo "$cluster_id" >"$RUN/kafka-cluster-id"
    say "formatting Kafka storage in $KAFKA_DATA (cluster $cluster_id)"
    "${KAFKA_JVM[@]}" kafka.tools.StorageTool format --cluster-id "$cluster_id" --config "$KAFKA_PROPS" \
        >>"$KAFKA_LOG" 2>&1 || { log_tail "$KAFKA_LOG"; die "formatting Kafka storage failed"; }
}

wait_kafka() {
    local pid=$1 deadline=$((SECONDS + KAFKA_START_TIMEOUT))
    until port_open "$KAFKA_HOST" "$KAFKA_PORT"; do
        if ! still_starting "$pid"; then
            log_tail "$KAFKA_LOG"
            die "Kafka (pid $pid) exited during start-up; see $KAFKA_LOG"
        fi
        if ((SECONDS >= deadline)); then
            log_tail "$KAFKA_LOG"
            die "Kafka did not open $KAFKA_HOST:$KAFKA_PORT within ${KAFKA_START_TIMEOUT}s; see $KAFKA_LOG"
        fi
        sleep 0.5
    done
    # An open port is not a serving broker; a metadata round trip is.
    if "$PYTHON" -c 'import producer_tools.topics' 2>/dev/null; then
        local left=$((deadline - SECONDS))
        ((left > 5)) || left=5
        if ! OCR_KAFKA_BOOTSTRAP="$KAFKA_HOST:$KAFKA_PORT" \
            "$PYTHON" -m producer_tools.topics wait --wait "$left"; then
            log_tail "$KAFKA_LOG"
            die "Kafka does not answer metadata requests; see $KAFKA_LOG"
        fi
    else
        say "warning: $PYTHON cannot import producer_tools.topics (run make install); only the port was checked"
    fi
}

start_kafka() {
    local pid
    if pid=$(live_pid kafka "$KAFKA_MARKER"); then
        say "kafka already running (pid $pid) on $KAFKA_HOST:$KAFKA_PORT"
        return 0
    fi
    for port in "$KAFKA_PORT" "$CONTROLLER_PORT"; do
        if port_open "$KAFKA_HOST" "$port"; then
            die "$KAFKA_HOST:$port is in use by a process this script did not start; stop it or set OCR_KAFKA_BOOTSTRAP / OCR_KAFKA_CONTROLLER_PORT"
        fi
    done
    ensure_java
    ensure_kafka_libs
    mkdir -p "$KAFKA_DATA"
    render_kafka_props
    format_kafka_storage
    say "starting Kafka $KAFKA_VERSION on $KAFKA_HOST:$KAFKA_PORT (controller :$CONTROLLER_PORT), log $KAFKA_LOG"
    echo "==== $(date -Is) start (Kafka $KAFKA_VERSION)" >>"$KAFKA_LOG"
    # stdin/stdout/stderr all detached and the lock fd closed: a caller capturing our output
    # (pytest, make) must not wait for the broker to close its copy of the pipe, and the
    # broker must not hold the stack lock for its whole life.
    nohup "${KAFKA_JVM[@]}" "$KAFKA_MARKER" "$KAFKA_PROPS" </dev/null >>"$KAFKA_LOG" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$RUN/kafka.pid"
    wait_kafka "$pid"
    say "kafka answers on $KAFKA_HOST:$KAFKA_PORT (pid $pid)"
}

# --- Redis ----------------------------------------------------------------------------------

REDIS_DATA="$RUN/redis-data"
REDIS_LOG="$RUN/redis.log"
REDIS_MARKER="redis-server"

redis_answers() {
    local reply
    reply=$(timeout 2 bash -c '
        exec 3<>/dev/tcp/$0/$1 || exit 1
        printf "PING\r\n" >&3
        IFS= read -r -t 1 line <&3 && printf "%s" "$line"
    ' "$REDIS_HOST" "$REDIS_PORT" 2>/dev/null) || return 1
    # -NOAUTH means it serves but wants the password; -LOADING means not yet.
    [[ "$reply" == +PONG* || "$reply" == -NOAUTH* ]]
}

start_redis() {
    local pid
    if pid=$(live_pid redis "$REDIS_MARKER"); then
        say "redis already running (pid $pid) on $REDIS_HOST:$REDIS_PORT"
        return 0
    fi
    if port_open "$REDIS_HOST" "$REDIS_PORT"; then
        # Typically Debian's own redis-server service, which the package starts on install.
        die "$REDIS_HOST:$REDIS_PORT is in use by a process this script did not start; stop it (for Debian's service: systemctl disable --now redis-server) or set OCR_REDIS_URL"
    fi
    ensure_redis
    mkdir -p "$REDIS_DATA"
    local auth=()
    if [[ -n "${OCR_REDIS_PASSWORD:-}" ]]; then
        auth=(--requirepass "$OCR_REDIS_PASSWORD")
    fi
    say "starting redis on $REDIS_HOST:$REDIS_PORT, log $REDIS_LOG"
    echo "==== $(date -Is) start" >>"$REDIS_LOG"
    # An append-only file flushed every second: task state survives down/up and a SIGKILL
    # loses at most the last second, which is what the fault tests exercise.
    nohup redis-server --bind "$REDIS_HOST" --port "$REDIS_PORT" --protected-mode yes \
        --daemonize no --supervised no --logfile "" --dir "$REDIS_DATA" \
        --save "" --appendonly yes --appendfsync everysec "${auth[@]}" \
        </dev/null >>"$REDIS_LOG" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$RUN/redis.pid"
    local deadline=$((SECONDS + 30))
    until redis_answers; do
        if ! still_starting "$pid"; then
            log_tail "$REDIS_LOG"
            die "redis (pid $pid) exited during start-up; see $REDIS_LOG"
        fi
        ((SECONDS < deadline)) || { log_tail "$REDIS_LOG"; die "redis did not answer within 30s; see $REDIS_LOG"; }
        sleep 0.2
    done
    say "redis answers on $REDIS_HOST:$REDIS_PORT (pid $pid)"
}

# --- topics and consumer --------------------------------------------------------------------

ensure_topics() {
    if ! "$PYTHON" -c 'import producer_tools.topics' 2>/dev/null; then
        say "warning: $PYTHON cannot import producer_tools.topics (run make install); topics not created"
        return 0
    fi
    OCR_KAFKA_BOOTSTRAP="$KAFKA_HOST:$KAFKA_PORT" "$PYTHON" -m producer_tools.topics create --wait 0 \
        || die "creating the default topics failed"
}

CONSUMER_BIN="$REPO/.venv/bin/ocr-consumer"
CONSUMER_LOG="$RUN/consumer.log"
CONSUMER_MARKER="ocr-consumer"

start_consumer() {
    local pid
    if pid=$(live_pid consumer "$CONSUMER_MARKER"); then
        say "consumer already running (pid $pid)"
        return 0
    fi
    if [[ ! -x "$CONSUMER_BIN" ]]; then
        say "skipping the consumer: $CONSUMER_BIN does not exist (run make install)"
        return 0
    fi
    # ocr-submit hands files over under .run/blobs; the consumer must accept that root.
    mkdir -p "$RUN/blobs"
    say "starting the consumer (engine auto), log $CONSUMER_LOG"
    echo "==== $(date -Is) start" >>"$CONSUMER_LOG"
    (
        cd "$REPO"
        export OCR_FILE_ROOTS="${OCR_FILE_ROOTS:-$RUN/blobs}" OCR_BLOB_ROOT="${OCR_BLOB_ROOT:-$RUN/blobs}"
        export OCR_LOG_FORMAT="${OCR_LOG_FORMAT:-json}"
        # Figures are stored by default (.run/artifacts); an empty OCR_ARTIFACTS_URI turns
        # the store off. Tools read them with OCR_ARTIFACTS_URI set the same way.
        export OCR_ARTIFACTS_URI="${OCR_ARTIFACTS_URI-$RUN/artifacts}"
        exec nohup "$CONSUMER_BIN" --engine auto </dev/null >>"$CONSUMER_LOG" 2>&1 9>&-
    ) &
    pid=$!
    echo "$pid" >"$RUN/consumer.pid"
    # Catch a consumer that dies at once (bad settings, engine import error) here rather
    # than leaving a stale PID file behind for the demo to trip over.
    sleep 3
    if ! live_pid consumer "$CONSUMER_MARKER" >/dev/null; then
        log_tail "$CONSUMER_LOG"
        rm -f "$RUN/consumer.pid"
        die "the consumer exited during start-up; see $CONSUMER_LOG"
    fi
    say "consumer running (pid $pid)"
}

stop_consumer() {
    # The consumer drains in-flight pages for OCR_SHUTDOWN_GRACE_S (20 s) before it exits.
    stop_process consumer "$CONSUMER_MARKER" 40
}

GATEWAY_BIN="$REPO/.venv/bin/ocr-gateway"
GATEWAY_LOG="$RUN/gateway.log"
GATEWAY_MARKER="ocr-gateway"

start_gateway() {
    local pid
    if pid=$(live_pid gateway "$GATEWAY_MARKER"); then
        say "gateway already running (pid $pid) on http://$GATEWAY_HOST:$GATEWAY_PORT"
        return 0
    fi
    if [[ ! -x "$GATEWAY_BIN" ]]; then
        say "skipping the gateway: $GATEWAY_BIN does not exist (run make install)"
        return 0
    fi
    [[ -n "$GATEWAY_HOST" ]] || die "OCR_GATEWAY_HOST '${OCR_GATEWAY_HOST:-}' is not a loopback address; the local stack listens on 127.0.0.1 only"
    if port_open "$GATEWAY_HOST" "$GATEWAY_PORT"; then
        die "$GATEWAY_HOST:$GATEWAY_PORT is in use by a process this script did not start; stop it or set OCR_GATEWAY_PORT"
    fi
    mkdir -p "$RUN/blobs"
    say "starting the gateway on http://$GATEWAY_HOST:$GATEWAY_PORT, log $GATEWAY_LOG"
    echo "==== $(date -Is) start" >>"$GATEWAY_LOG"
    (
        cd "$REPO"
        # Uploads are handed over where the consumer reads them; figures for result.zip
        # are read from the consumer's store.
        export OCR_BLOB_ROOT="${OCR_BLOB_ROOT:-$RUN/blobs}"
        export OCR_ARTIFACTS_URI="${OCR_ARTIFACTS_URI-$RUN/artifacts}"
        export OCR_GATEWAY_HOST="$GATEWAY_HOST" OCR_GATEWAY_PORT="$GATEWAY_PORT"
        export OCR_LOG_FORMAT="${OCR_LOG_FORMAT:-json}"
        exec nohup "$GATEWAY_BIN" </dev/null >>"$GATEWAY_LOG" 2>&1 9>&-
    ) &
    pid=$!
    echo "$pid" >"$RUN/gateway.pid"
    local deadline=$((SECONDS + 60))
    until port_open "$GATEWAY_HOST" "$GATEWAY_PORT"; do
        if ! still_starting "$pid"; then
            log_tail "$GATEWAY_LOG"
            rm -f "$RUN/gateway.pid"
            die "the gateway exited during start-up; see $GATEWAY_LOG"
        fi
        ((SECONDS < deadline)) || { log_tail "$GATEWAY_LOG"; die "the gateway did not listen within 60s; see $GATEWAY_LOG"; }
        sleep 0.3
    done
    say "gateway answers on http://$GATEWAY_HOST:$GATEWAY_PORT (pid $pid)"
}

stop_gateway() {
    stop_process gateway "$GATEWAY_MARKER" 20
}

# --- commands -------------------------------------------------------------------------------

status_line() {
    local name=$1 marker=$2 address=$3 check=$4 pid
    if pid=$(live_pid "$name" "$marker"); then
        if $check; then
            say "$name: running (pid $pid), answering on $address"
        else
            say "$name: running (pid $pid), NOT answering on $address"
            return 1
        fi
    else
        say "$name: stopped"
        return 1
    fi
}

status() {
    local rc=0
    status_line kafka "$KAFKA_MARKER" "$KAFKA_HOST:$KAFKA_PORT" \
        "port_open $KAFKA_HOST $KAFKA_PORT" || rc=3
    status_line redis "$REDIS_MARKER" "$REDIS_HOST:$REDIS_PORT" redis_answers || rc=3
    local pid
    if pid=$(live_pid consumer "$CONSUMER_MARKER"); then
        say "consumer: running (pid $pid), log $CONSUMER_LOG"
    else
        say "consumer: stopped"
    fi
    if pid=$(live_pid gateway "$GATEWAY_MARKER"); then
        say "gateway: running (pid $pid) on http://$GATEWAY_HOST:$GATEWAY_PORT, log $GATEWAY_LOG"
    else
        say "gateway: stopped"
    fi
    return "$rc"
}

up() {
    # Test sessions stop a stack only if they started it (tests/integration/conftest.py keeps
    # this marker); an explicit `up` hands the stack back to whoever called it.
    rm -f "$RUN/test-sessions/started"
    start_redis
    start_kafka
    ensure_topics
    if [[ "$STACK_CONSUMER" == 1 ]]; then
        start_consumer
    fi
    if [[ "$STACK_GATEWAY" == 1 ]]; then
        start_gateway
    fi
    say "up: Kafka $KAFKA_HOST:$KAFKA_PORT, Redis redis://$REDIS_HOST:$REDIS_PORT (logs in $RUN)"
}

down() {
    stop_gateway
    stop_consumer
    stop_process kafka "$KAFKA_MARKER" 60
    stop_process redis "$REDIS_MARKER" 20
    say "down: nothing left running (data kept in $KAFKA_DATA and $REDIS_DATA)"
}

main() {
    local command=${1:-}
    mkdir -p "$RUN"
    # Two `up`s at once (make up while a test session starts the stack) would race on the
    # PID files and the ports.
    exec 9>"$RUN/stack.lock"
    flock -w 300 9 || die "another stack.sh is still running (lock $RUN/stack.lock)"
    case "$command" in
        up) up ;;
        down) down ;;
        status) status ;;
        deps) deps ;;
        test-deps)
            deps; ensure_interop_tools; ensure_go_interop_modules; ensure_s3_server; ensure_kustomize
            ensure_chromium
            ensure_keycloak
            keycloak_java=$(ensure_keycloak_java)
            say "test tools ready: versitygw $VERSITYGW_VERSION, kustomize $KUSTOMIZE_VERSION, $(chromium --version 2>/dev/null || echo chromium), Keycloak $KEYCLOAK_VERSION on Java $(java_home_major "$keycloak_java")"
            ;;
        s3-bin) ensure_s3_server >&2; echo "$VERSITYGW_BIN" ;;
        kustomize-bin) ensure_kustomize >&2; echo "$KUSTOMIZE_BIN" ;;
        keycloak-home) ensure_keycloak >&2; echo "$KEYCLOAK_HOME" ;;
        keycloak-java-home) ensure_keycloak_java ;;
        start-kafka) start_kafka ;;
        kill-kafka) stop_process kafka "$KAFKA_MARKER" 0 KILL ;;
        start-redis) start_redis ;;
        kill-redis) stop_process redis "$REDIS_MARKER" 0 KILL ;;
        wipe-redis)
            # Dead first: a live redis-server would rewrite its append-only file.
            stop_process redis "$REDIS_MARKER" 0 KILL
            rm -rf "$REDIS_DATA"
            say "redis data deleted ($REDIS_DATA); start-redis starts it empty"
            ;;
        start-consumer) start_consumer ;;
        stop-consumer) stop_consumer ;;
        start-gateway) start_gateway ;;
        stop-gateway) stop_gateway ;;
        *)
            echo "usage: $0 up|down|status|deps|test-deps|s3-bin|kustomize-bin|keycloak-home|keycloak-java-home|start-kafka|kill-kafka|start-redis|kill-redis|wipe-redis|start-consumer|stop-consumer|start-gateway|stop-gateway" >&2
            exit 2
            ;;
    esac
}

main "$@"
