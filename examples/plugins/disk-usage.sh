#!/bin/sh
# disk-usage: an out-of-process khook plugin in plain shell. It reports every filesystem
# fuller than THRESHOLD percent as a `disk-full` event, through `khook publish`, which
# speaks NATS and CloudEvents for it. Run it from cron, a systemd timer or a loop:
#
#   THRESHOLD=90 NAMESPACE=infra NATS_URL=nats://127.0.0.1:4222 \
#   PLUGIN_USER=disk-usage PLUGIN_PASSWORD_FILE=/etc/khook/disk-usage.pw ./disk-usage.sh
#
# (Variables named KHOOK_* would be read by khook as settings, hence PLUGIN_*.)
# Event ids are left to khook: a hash of the event, so running the script again inside the
# raw stream's duplicate window stores nothing new. The hour is part of the message, so the
# same full disk is reported again each hour.
set -eu
KHOOK=${KHOOK:-khook}
THRESHOLD=${THRESHOLD:-90}
NAMESPACE=${NAMESPACE:-infra}
HOUR=$(date -u +%Y-%m-%dT%H:00Z)

df -P | awk -v t="$THRESHOLD" -v ns="$NAMESPACE" -v hour="$HOUR" 'NR > 1 {
  used = $5; sub("%", "", used)
  if (used + 0 >= t + 0) {
    printf "{\"type\":\"disk-full\",\"namespace\":\"%s\",\"resourceKind\":\"Filesystem\",\"resourceName\":\"%s\",\"reason\":\"DiskFull\",\"message\":\"%s is %s%% full (%s)\"}\n", ns, $6, $6, used, hour
  }
}' | "$KHOOK" publish --source disk-usage \
  --nats-url "${NATS_URL:-nats://127.0.0.1:4222}" \
  ${PLUGIN_USER:+--user "$PLUGIN_USER"} ${PLUGIN_PASSWORD_FILE:+--password-file "$PLUGIN_PASSWORD_FILE"}
