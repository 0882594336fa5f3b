#!/bin/sh
# Restore etcd member etcd1 (systemd layout) from /var/backups/etcd/etcd-snapshot-prod-20261123T224500Z.db.zst, cluster token etcd-restore-prod-20261123T224500Z.
# Run it on every member at about the same time: after starting etcd it waits up to
# HEALTH_TIMEOUT seconds for every member to be healthy.
# sh restore-etcd1.sh runs every step in order; naming steps runs only those (to resume):
#   prepare stop_kubernetes stop_etcd swap_data_dir start_etcd wait_healthy checks start_kubernetes
set -eu

# Settings: adjust them here if this host differs.
MEMBER_NAME=etcd1
PEER_URL=http://192.168.7.101:2380
INITIAL_CLUSTER=etcd1=http://192.168.7.101:2380,etcd2=http://192.168.7.102:2380,etcd3=http://192.168.7.103:2380
TOKEN=etcd-restore-prod-20261123T224500Z  # the same on every member: it comes from the snapshot
BUMP_REVISION=1000000000  # the same on every member; 0: no bump (for an etcdutl before 3.5.10)
ENDPOINTS=http://192.168.7.101:2379,http://192.168.7.102:2379,http://192.168.7.103:2379
SNAPSHOT=/var/backups/etcd/etcd-snapshot-prod-20261123T224500Z.db.zst
DATA_DIR=/var/lib/etcd
STAGING=/var/lib/etcd.restoring  # restored here while etcd still runs
DATA_DIR_OWNER=etcd:etcd  # user[:group] of the restored data dir; empty: the old data dir's owner
ETCD_BACKUPD=etcd-backupd
ETCD_BIN_DIR=/opt/etcd/bin  # etcdutl (or 3.4's etcdctl) for the restore
ETCDCTL=etcdctl
HEALTH_TIMEOUT=300  # seconds to wait for every member
POLL_INTERVAL=2
ETCD_UNIT=etcd
KUBERNETES_UNITS='kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy'  # those present are stopped/started

say() { printf '%s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }

ctl() {
    ETCDCTL_API=3 "$ETCDCTL" --endpoints="$ENDPOINTS" "$@"
}

# Verify the snapshot and restore it beside the data dir, while etcd still runs
prepare() {
    # decompressed and verified (against its manifest's SHA-256 when fetched) before anything is
    # stopped; a STAGING left by an earlier run is moved aside
    # BUMP_REVISION: the revision jumps past any a client saw, so Kubernetes' watches re-list.
    # Without the flags: an etcdutl before 3.5.10 (or 3.4's etcdctl) lacks --bump-revision and
    # --mark-compacted, and the restore refuses them before touching anything: set BUMP_REVISION=0 (or
    # make the plan with --no-bump) and, once etcd is back, restart the kubelet on every node and
    # every controller outside the control plane, so that none keeps watching revisions from before
    # the restore.
    if [ "$BUMP_REVISION" != 0 ]; then set -- --bump-revision "$BUMP_REVISION" --mark-compacted; fi
    "$ETCD_BACKUPD" restore "$SNAPSHOT" \
        --data-dir "$STAGING" --force --name "$MEMBER_NAME" \
        --initial-cluster "$INITIAL_CLUSTER" --initial-cluster-token "$TOKEN" \
        --initial-advertise-peer-urls "$PEER_URL" --etcd-bin-dir "$ETCD_BIN_DIR" "$@"
}

# Stop Kubernetes
stop_kubernetes() {
    for unit in $KUBERNETES_UNITS; do
        if systemctl is-active --quiet "$unit"; then systemctl stop "$unit"; fi
    done
}

# Stop etcd
stop_etcd() {
    systemctl stop "$ETCD_UNIT"
}

# Move the old data dir aside and the restored one into its place
swap_data_dir() {
    [ -d "$STAGING/member" ] || fail "$STAGING holds no restored member: run the prepare step first"
    owner=$DATA_DIR_OWNER
    if [ -e "$DATA_DIR" ]; then
        [ -n "$owner" ] || owner=$(stat -c %u:%g "$DATA_DIR")
        aside="$DATA_DIR.before-restore-$(date -u +%Y%m%dT%H%M%SZ)"
        mv "$DATA_DIR" "$aside"
        say "the old data dir is now $aside"
    fi
    mv "$STAGING" "$DATA_DIR"
    # an etcd that runs as its own user must own what it reads and writes
    if [ -n "$owner" ]; then chown -R "$owner" "$DATA_DIR"; fi
}

# Start etcd
start_etcd() {
    # without waiting: a Type=notify etcd has started only once it has a quorum, which
    # needs the other members; wait_healthy waits for that, with a bound
    systemctl start --no-block "$ETCD_UNIT"
}

# Wait until every member is healthy (the other members restore meanwhile)
wait_healthy() {
    deadline=$(( $(date +%s) + HEALTH_TIMEOUT ))
    until answer=$(ctl endpoint health 2>&1); do
        [ "$(date +%s)" -lt "$deadline" ] || fail "etcd is not healthy on every member after" \
            "$HEALTH_TIMEOUT s (is the restore running on every member?): $answer"
        sleep "$POLL_INTERVAL"
    done
    say "$answer"
}

# Check etcd: status and members
checks() {
    ctl endpoint status -w table
    ctl member list -w table
}

# Start Kubernetes again
start_kubernetes() {
    for unit in $KUBERNETES_UNITS; do
        if systemctl is-enabled --quiet "$unit" 2>/dev/null; then
            systemctl start "$unit"
        fi
    done
}

STEPS='prepare stop_kubernetes stop_etcd swap_data_dir start_etcd wait_healthy checks start_kubernetes'
remaining=''
resume_hint() {
    if [ "$1" -ne 0 ] && [ -n "$remaining" ]; then
        printf 'stopped in step %s; once its cause is fixed, resume with: sh %s %s\n' \
            "${remaining%% *}" "$0" "$remaining" >&2
    fi
}
trap 'resume_hint "$?"' EXIT
[ "$#" -gt 0 ] || set -- $STEPS
for step in "$@"; do
    case " $STEPS " in *" $step "*) ;; *) fail "no step $step; the steps: $STEPS" ;; esac
done
while [ "$#" -gt 0 ]; do
    remaining="$*"
    say "== $1"
    "$1"
    shift
done
remaining=''
