#!/bin/sh
# Starts a sentinel watching the current master (pod 0 on a fresh start). Sentinels
# find each other through the master; they announce DNS names, not pod IPs, which
# change when a pod is rescheduled.
set -eu
SELF="$(hostname).${HEADLESS}"
conf=/run/redis/sentinel.conf
umask 077
master=""
i=0
while [ "$i" -lt "$REPLICAS" ]; do
  master=$(redis-cli -h "${STATEFULSET}-${i}.${HEADLESS}" -p 26379 \
    sentinel get-master-addr-by-name "$MASTER_NAME" 2>/dev/null | head -n 1) || master=""
  [ -n "$master" ] && break
  i=$((i + 1))
done
[ -n "$master" ] || master="${STATEFULSET}-0.${HEADLESS}"
cat > "$conf" <<CONF
port 26379
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip ${SELF}
requirepass ${REDISCLI_AUTH}
sentinel sentinel-pass ${REDISCLI_AUTH}
sentinel monitor ${MASTER_NAME} ${master} 6379 ${QUORUM}
sentinel auth-pass ${MASTER_NAME} ${REDISCLI_AUTH}
sentinel down-after-milliseconds ${MASTER_NAME} 5000
sentinel failover-timeout ${MASTER_NAME} 60000
sentinel parallel-syncs ${MASTER_NAME} 1
CONF
exec redis-sentinel "$conf"
