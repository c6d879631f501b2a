#!/bin/sh
# Starts Redis as a replica of the current master, or as the first master.
# The sentinels are asked first: after a failover pod 0 must come back as a replica
# of whichever pod was promoted, never as a second master.
set -eu
SELF="$(hostname).${HEADLESS}"
conf=/run/redis/redis.conf
umask 077
cat > "$conf" <<CONF
port 6379
bind * -::*
protected-mode no
dir /data
appendonly yes
appendfsync everysec
save ""
requirepass ${REDISCLI_AUTH}
masterauth ${REDISCLI_AUTH}
replica-announce-ip ${SELF}
CONF
master=""
i=0
while [ "$i" -lt "$REPLICAS" ]; do
  master=$(redis-cli -h "${STATEFULSET}-${i}.${HEADLESS}" -p 26379 \
    sentinel get-master-addr-by-name "$MASTER_NAME" 2>/dev/null | head -n 1) || master=""
  [ -n "$master" ] && break
  i=$((i + 1))
done
if [ -z "$master" ] && [ "$(hostname)" != "${STATEFULSET}-0" ]; then
  master="${STATEFULSET}-0.${HEADLESS}"
fi
if [ -n "$master" ] && [ "$master" != "$SELF" ]; then
  echo "replicaof ${master} 6379" >> "$conf"
fi
exec redis-server "$conf"
