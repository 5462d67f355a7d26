#!/usr/bin/env bash
# The real engines under the distributed path, on loopback: an Apache Kafka
# cluster (KRaft, every node broker and controller) and an Apache Cassandra
# cluster (the CQL server closest to ScyllaDB that runs here).
#
#   eval "$(scripts/engines.sh up [--kafka N] [--cql N])"   start, wait until healthy, print exports
#   scripts/engines.sh down                                  stop every node it started (by pid)
#   scripts/engines.sh status                                what runs
#   scripts/engines.sh kill kafka|cql I                      SIGKILL node I (drills)
#   scripts/engines.sh start kafka|cql I                     start node I again on its data (drills)
#   scripts/engines.sh wait kafka|cql I                      wait until node I serves again
#   scripts/engines.sh pid kafka|cql I                       node I's pid, when it runs
#   scripts/engines.sh signal kafka|cql I STOP|CONT          freeze or thaw node I (drills)
#   scripts/engines.sh leaders TOPIC                         the Kafka node leading each partition, one per line
#
# Versions are pinned by deploy/engines/*-pom.xml; the jars come from Maven
# Central into .tools/ on first use. Kafka node I listens on 127.0.0.1I:9092
# (controller 9093), Cassandra node I on 127.0.0.2I:9042 (storage 7000).
# Heaps (2 cores, 24 GiB, up to 3+3 nodes beside the tests): Kafka 512 MiB,
# Cassandra 1 GiB (G1, 50 ms pause target); KAFKA_HEAP and CQL_HEAP
# override them. Replication: a cluster of N has replication factor N for
# Kafka's topics (min.insync.replicas 2 when N >= 3); the CQL keyspace's
# replication is the client's choice (`--scylla-replication datacenter1=3`).
# State, data and logs live under $HEALTHCODE_ENGINES_DIR (default
# .tools/engines); `down` keeps the logs, `up` starts from empty data.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
TOOLS="$root/.tools"
RUN=${HEALTHCODE_ENGINES_DIR:-$TOOLS/engines}
KAFKA_HEAP=${KAFKA_HEAP:-512m}
CQL_HEAP=${CQL_HEAP:-1g}
JAVA=${JAVA_HOME:+$JAVA_HOME/bin/}java

say() { echo "engines: $*" >&2; }
die() { say "$*"; exit 1; }

kafka_addr() { echo "127.0.0.1$1"; }
cql_addr() { echo "127.0.0.2$1"; }

# Fetches the jars pinned by deploy/engines/<name>-pom.xml into .tools/<name>/libs.
fetch() {
    local name=$1 libs="$TOOLS/$1/libs" pom="$root/deploy/engines/$1-pom.xml"
    if [ -f "$libs/.complete" ] && [ "$libs/.complete" -nt "$pom" ]; then
        return
    fi
    command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch $name; apt-get install maven"
    say "fetching $name from Maven Central (pinned by ${pom#"$root"/})"
    rm -rf "$libs"
    mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DoutputDirectory="$libs" >&2 \
        || die "could not fetch $name with Maven"
    touch "$libs/.complete"
}

node_dir() { echo "$RUN/$1-$2"; }

running() {
    local pidfile
    pidfile="$(node_dir "$1" "$2")/pid"
    [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# Waits until host:port accepts TCP connections or the node dies.
wait_port() {
    local kind=$1 i=$2 host=$3 port=$4 limit=$5
    local deadline=$((SECONDS + limit))
    until (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; do
        running "$kind" "$i" || die "$kind-$i died while starting; see $(node_dir "$kind" "$i")/out.log"
        [ $SECONDS -lt $deadline ] || die "$kind-$i did not listen on $host:$port within ${limit}s"
        sleep 0.5
    done
}

# Waits until the node's log says it serves.
wait_log() {
    local kind=$1 i=$2 pattern=$3 limit=$4 log
    log="$(node_dir "$kind" "$i")/out.log"
    local deadline=$((SECONDS + limit))
    until grep -q "$pattern" "$log" 2>/dev/null; do
        running "$kind" "$i" || die "$kind-$i died while starting; see $log"
        [ $SECONDS -lt $deadline ] || die "$kind-$i did not log '$pattern' within ${limit}s; see $log"
        sleep 0.5
    done
}

count() { cat "$RUN/$1.count" 2>/dev/null || echo 0; }

# --- Kafka -----------------------------------------------------------------

kafka_configure() {
    local n=$1 i dir addr voters="" min_isr=1
    [ "$n" -ge 3 ] && min_isr=2
    for i in $(seq 1 "$n"); do
        voters+="${voters:+,}$i@$(kafka_addr "$i"):9093"
    done
    local cluster_id
    # Never starting with '-' (as Kafka's own random-uuid): kafka-storage's
    # argument parser takes such an id for an option (1 start in 32 failed).
    cluster_id=$(python3 -c 'import base64, uuid
while True:
    i = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not i.startswith("-"):
        print(i)
        break')
    for i in $(seq 1 "$n"); do
        dir=$(node_dir kafka "$i")
        addr=$(kafka_addr "$i")
        rm -rf "$dir"
        mkdir -p "$dir/data"
        cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=PLAINTEXT://$addr:9092,CONTROLLER://$addr:9093
advertised.listeners=PLAINTEXT://$addr:9092
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=4
default.replication.factor=$n
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$n
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$n
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$n
share.coordinator.state.topic.min.isr=$min_isr
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
unclean.leader.election.enable=false
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.flush.interval.ms=1000
EOF
        cat >"$dir/log4j.properties" <<EOF
log4j.rootLogger=INFO, out
log4j.appender.out=org.apache.log4j.ConsoleAppender
log4j.appender.out.layout=org.apache.log4j.PatternLayout
log4j.appender.out.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.controller=INFO
log4j.logger.state.change.logger=WARN
EOF
        "$JAVA" -cp "$TOOLS/kafka/libs/*" -Dlog4j.configuration="file:$dir/log4j.properties" \
            kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
            || die "formatting kafka-$i failed; see $dir/format.log"
    done
}

kafka_start() {
    local i=$1 dir
    dir=$(node_dir kafka "$i")
    [ -f "$dir/server.properties" ] || die "kafka-$i is not configured; run up first"
    running kafka "$i" && return
    # setsid: the node outlives the shell that started it and gets its own group.
    setsid "$JAVA" -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:ParallelGCThreads=1 -XX:ConcGCThreads=1 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dlog4j.configuration="file:$dir/log4j.properties" \
        -cp "$TOOLS/kafka/libs/*" kafka.Kafka "$dir/server.properties" >"$dir/out.log" 2>&1 </dev/null &
    echo $! >"$dir/pid"
}

kafka_wait() {
    local i=$1
    wait_port kafka "$i" "$(kafka_addr "$i")" 9092 180
    wait_log kafka "$i" "Kafka Server started" 180
}


# --- Cassandra -------------------------------------------------------------

cql_configure() {
    local n=$1 i dir addr seeds=""
    for i in $(seq 1 "$n"); do seeds+="${seeds:+,}$(cql_addr "$i"):7000"; done
    for i in $(seq 1 "$n"); do
        dir=$(node_dir cql "$i")
        addr=$(cql_addr "$i")
        rm -rf "$dir"
        mkdir -p "$dir/data" "$dir/commitlog" "$dir/saved_caches" "$dir/hints" "$dir/cdc_raw"
        cat >"$dir/cassandra.yaml" <<EOF
cluster_name: healthcode
num_tokens: 16
allocate_tokens_for_local_replication_factor: $([ "$n" -ge 3 ] && echo 3 || echo "$n")
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$seeds"
listen_address: $addr
rpc_address: $addr
storage_port: 7000
native_transport_port: 9042
start_native_transport: true
data_file_directories: [$dir/data]
commitlog_directory: $dir/commitlog
saved_caches_directory: $dir/saved_caches
hints_directory: $dir/hints
cdc_raw_directory: $dir/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 32MiB
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
network_authorizer: AllowAllNetworkAuthorizer
# Six JVMs, builds and tests share two cores here: a node whose gossip is
# late by a few seconds is busy, not dead (12 is the usual choice for noisy
# hosts; the default 8 convicted live nodes and stalled schema agreement).
phi_convict_threshold: 12
hinted_handoff_enabled: true
max_hint_window: 3h
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 4
concurrent_compactors: 1
compaction_throughput: 64MiB/s
memtable_heap_space: 128MiB
memtable_offheap_space: 128MiB
key_cache_size: 16MiB
# A node on a shared 2-core machine answers more slowly than a production
# one; these stay below the clients' own timeouts.
read_request_timeout: 5000ms
write_request_timeout: 2000ms
range_request_timeout: 10000ms
request_timeout: 10000ms
disk_failure_policy: stop
commit_failure_policy: stop
EOF
        cat >"$dir/logback.xml" <<EOF
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <filter class="ch.qos.logback.classic.filter.ThresholdFilter"><level>INFO</level></filter>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
EOF
    done
}

# Cassandra's own JVM options for Java 17 (conf/jvm17-server.options).
CQL_JPMS=(
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.allocator.useCacheForAllThreads=true
    -Dio.netty.allocator.maxOrder=11
)

cql_start() {
    local i=$1 dir
    dir=$(node_dir cql "$i")
    [ -f "$dir/cassandra.yaml" ] || die "cql-$i is not configured; run up first"
    running cql "$i" && return
    # No JMX (nothing here uses nodetool); a test cluster need not wait for
    # gossip to settle or a ring delay before it serves.
    # G1 sizes the young generation for a 50 ms pause target (no fixed
    # -Xmn): with Cassandra's own 300 ms target and one GC thread, young
    # collections took 300-450 ms under a 1M-resident round and every read
    # with a 200 ms timeout behind them failed.
    setsid "$JAVA" -Xms"$CQL_HEAP" -Xmx"$CQL_HEAP" -Xss256k \
        -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 -XX:MaxGCPauseMillis=50 \
        -XX:ParallelGCThreads=2 -XX:ConcGCThreads=1 -XX:+AlwaysPreTouch -XX:+ExitOnOutOfMemoryError \
        "${CQL_JPMS[@]}" \
        -Dcassandra.config="file://$dir/cassandra.yaml" -Dcassandra.storagedir="$dir" \
        -Dlogback.configurationFile="$dir/logback.xml" -Dcassandra.logdir="$dir" \
        -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.ring_delay_ms=1000 \
        -Dcassandra-foreground=yes \
        -cp "$TOOLS/cassandra/libs/*" org.apache.cassandra.service.CassandraDaemon >"$dir/out.log" 2>&1 </dev/null &
    echo $! >"$dir/pid"
}

cql_wait() {
    local i=$1
    wait_port cql "$i" "$(cql_addr "$i")" 9042 300
}

# host:port of every node of KIND, comma-separated, for clients.
client_addresses() {
    local kind=$1 port=$2 i out=""
    for i in $(seq 1 "$(count "$kind")"); do out+="${out:+,}$("${kind}_addr" "$i"):$port"; done
    echo "$out"
}

# Waits until every Cassandra node has seen every other one up (gossip), so
# the first schema change finds them in agreement.
cql_settle() {
    local n=$1 i j deadline=$((SECONDS + 120))
    for i in $(seq 1 "$n"); do
        for j in $(seq 1 "$n"); do
            [ "$i" = "$j" ] && continue
            until grep -q "InetAddress /$(cql_addr "$j"):7000 is now UP" "$(node_dir cql "$i")/out.log"; do
                [ $SECONDS -lt $deadline ] || die "cql-$i never saw cql-$j up; see $(node_dir cql "$i")/out.log"
                sleep 0.5
            done
        done
    done
}

# --- commands --------------------------------------------------------------

stop_node() {
    local kind=$1 i=$2 signal=${3:-TERM} pidfile pid
    pidfile="$(node_dir "$kind" "$i")/pid"
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill "-$signal" "$pid" 2>/dev/null || true
        for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

down() {
    local kind i
    for kind in kafka cql; do
        for i in $(seq 1 "$(count $kind)"); do
            if running "$kind" "$i"; then say "stopping $kind-$i"; fi
            stop_node "$kind" "$i"
        done
    done
}

status() {
    local kind i any=0
    for kind in kafka cql; do
        for i in $(seq 1 "$(count $kind)"); do
            if running "$kind" "$i"; then
                echo "$kind-$i running (pid $(cat "$(node_dir "$kind" "$i")/pid")) at $("${kind}_addr" "$i")"
                any=1
            else
                echo "$kind-$i stopped"
            fi
        done
    done
    [ $any = 1 ] || echo "nothing runs"
}

exports() {
    [ "$(count kafka)" -gt 0 ] && echo "export HEALTHCODE_KAFKA_BROKERS=$(client_addresses kafka 9092)"
    [ "$(count cql)" -gt 0 ] && echo "export HEALTHCODE_SCYLLA_NODES=$(client_addresses cql 9042)"
    echo "export HEALTHCODE_ENGINES_DIR=$RUN"
}

up() {
    local kafka=1 cql=1 i
    while [ $# -gt 0 ]; do
        case $1 in
            --kafka) kafka=$2; shift 2 ;;
            --cql) cql=$2; shift 2 ;;
            *) die "unknown option $1 (up [--kafka N] [--cql N])" ;;
        esac
    done
    [[ $kafka =~ ^[0-9]$ && $cql =~ ^[0-9]$ ]] || die "--kafka and --cql take 0 to 9 nodes"
    command -v "$JAVA" >/dev/null || die "no java; a JDK 17 or newer is needed (apt-get install openjdk-17-jre-headless)"
    mkdir -p "$RUN"
    down
    [ "$kafka" -gt 0 ] && fetch kafka
    [ "$cql" -gt 0 ] && fetch cassandra
    echo "$kafka" >"$RUN/kafka.count"
    echo "$cql" >"$RUN/cql.count"
    local started=$SECONDS
    if [ "$cql" -gt 0 ]; then
        cql_configure "$cql"
        # One node after another: nodes that join together compute the same
        # tokens (allocate_tokens_for_local_replication_factor is
        # deterministic given the ring), and Cassandra then ignores one of
        # them ("Nodes ... have the same token"), flapping it in gossip.
        for i in $(seq 1 "$cql"); do
            cql_start "$i"
            cql_wait "$i"
        done
    fi
    if [ "$kafka" -gt 0 ]; then
        kafka_configure "$kafka"
        for i in $(seq 1 "$kafka"); do kafka_start "$i"; done
        for i in $(seq 1 "$kafka"); do kafka_wait "$i"; done
    fi
    cql_settle "$cql"
    say "up in $((SECONDS - started)) s: $kafka Kafka, $cql Cassandra node(s)"
    exports
}

node_cmd() {
    local cmd=$1 kind=${2:-} i=${3:-}
    [[ $kind == kafka || $kind == cql ]] || die "$cmd: kafka or cql"
    [[ $i =~ ^[1-9]$ ]] && [ "$i" -le "$(count "$kind")" ] || die "$cmd: no $kind node $i"
    case $cmd in
        kill) stop_node "$kind" "$i" KILL ;;
        start) "${kind}_start" "$i" ;;
        wait) "${kind}_wait" "$i" ;;
        pid) running "$kind" "$i" && cat "$(node_dir "$kind" "$i")/pid" ;;
        signal)
            [[ ${4:-} == STOP || ${4:-} == CONT ]] || die "signal: STOP or CONT"
            running "$kind" "$i" && kill "-$4" "$(cat "$(node_dir "$kind" "$i")/pid")"
            ;;
    esac
}

# Kafka's own TopicCommand: the drills' tooling needs no Kafka client library.
leaders() {
    local topic=${1:-} i
    [ -n "$topic" ] || die "leaders: name a topic"
    for i in $(seq 1 "$(count kafka)"); do
        running kafka "$i" || continue
        "$JAVA" -Xmx128m -XX:TieredStopAtLevel=1 -Dlog4j.configuration=file:/dev/null -cp "$TOOLS/kafka/libs/*" \
            org.apache.kafka.tools.TopicCommand --bootstrap-server "$(kafka_addr "$i"):9092" --describe --topic "$topic" \
            2>/dev/null | sed -n 's/.*Partition: [0-9]*[[:space:]]*Leader: \(-\?[0-9]*\).*/\1/p'
        return
    done
    die "leaders: no Kafka node runs"
}

case ${1:-} in
    up) shift; up "$@" ;;
    leaders) shift; leaders "$@" ;;
    down) down; say "down" ;;
    status) status ;;
    env) exports ;;
    kill | start | wait | pid | signal) node_cmd "$@" ;;
    *) die "usage: engines.sh up [--kafka N] [--cql N] | down | status | env | leaders TOPIC | kill|start|wait|pid|signal kafka|cql I [SIG]" ;;
esac
