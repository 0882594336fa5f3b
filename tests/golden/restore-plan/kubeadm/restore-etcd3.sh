#!/bin/sh
# Restore etcd member etcd3 (kubeadm layout) from /var/backups/etcd/etcd-snapshot-prod-20261123T224500Z.db.zst, cluster token etcd-restore-prod-20261123T224500Z.
# Run it on every member at about the same time: after starting etcd it waits up to
# HEALTH_TIMEOUT seconds for every member to be healthy.
# sh restore-etcd3.sh runs every step in order; naming steps runs only those (to resume):
#   prepare stop_kubernetes stop_etcd swap_data_dir start_etcd wait_healthy checks start_kubernetes
set -eu

# Settings: adjust them here if this host differs.
MEMBER_NAME=etcd3
PEER_URL=https://192.168.7.103:2380
INITIAL_CLUSTER=etcd1=https://192.168.7.101:2380,etcd2=https://192.168.7.102:2380,etcd3=https://192.168.7.103:2380
TOKEN=etcd-restore-prod-20261123T224500Z  # the same on every member: it comes from the snapshot
BUMP_REVISION=1000000000  # the same on every member; 0: no bump (for an etcdutl before 3.5.10)
ENDPOINTS=https://192.168.7.101:2379,https://192.168.7.102:2379,https://192.168.7.103:2379
SNAPSHOT=/var/backups/etcd/etcd-snapshot-prod-20261123T224500Z.db.zst
DATA_DIR=/var/lib/etcd
STAGING=/var/lib/etcd.restoring  # restored here while etcd still runs
DATA_DIR_OWNER=''  # user[:group] of the restored data dir; empty: the old data dir's owner
ETCD_BACKUPD=etcd-backupd
ETCDCTL=etcdctl
ETCD_CACERT=/etc/kubernetes/pki/etcd/ca.crt
ETCD_CERT=/etc/kubernetes/pki/etcd/healthcheck-client.crt
ETCD_KEY=/etc/kubernetes/pki/etcd/healthcheck-client.key
HEALTH_TIMEOUT=300  # seconds to wait for every member
POLL_INTERVAL=2
MANIFESTS=/etc/kubernetes/manifests
MANIFESTS_ASIDE=/etc/kubernetes/manifests-stopped-for-restore  # outside MANIFESTS: the kubelet runs every file there
CONTROL_PLANE='kube-apiserver kube-controller-manager kube-scheduler'
STOP_TIMEOUT=120  # seconds for the kubelet to stop a static pod

say() { printf '%s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }

ctl() {
    ETCDCTL_API=3 "$ETCDCTL" --endpoints="$ENDPOINTS" --cacert="$ETCD_CACERT" --cert="$ETCD_CERT" --key="$ETCD_KEY" "$@"
}

# move_manifests FROM TO NAME...: move those static pod manifests that are in FROM
move_manifests() {
    from=$1 to=$2
    shift 2
    mkdir -p "$to"
    for name in "$@"; do
        if [ -e "$from/$name.yaml" ]; then mv "$from/$name.yaml" "$to/$name.yaml"; fi
    done
}

# wait_stopped NAME...: until the kubelet has stopped the containers of these static pods
wait_stopped() {
    deadline=$(( $(date +%s) + STOP_TIMEOUT ))
    for name in "$@"; do
        while :; do
            running=$(crictl ps --quiet --name "^$name\$") ||
                fail "crictl cannot list the containers: is the container runtime up?"
            [ -n "$running" ] || break
            [ "$(date +%s)" -lt "$deadline" ] || fail "the $name container still runs" \
                "$STOP_TIMEOUT s after its manifest left $MANIFESTS: stop it with crictl stop"
            sleep "$POLL_INTERVAL"
        done
    done
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
        --initial-advertise-peer-urls "$PEER_URL" "$@"
}

# Stop the control plane: its static pod manifests leave the kubelet's directory
stop_kubernetes() {
    move_manifests "$MANIFESTS" "$MANIFESTS_ASIDE" $CONTROL_PLANE
    wait_stopped $CONTROL_PLANE
}

# Stop etcd: its static pod manifest leaves too
stop_etcd() {
    move_manifests "$MANIFESTS" "$MANIFESTS_ASIDE" etcd
    wait_stopped etcd
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

# Start etcd: its manifest goes back, and the kubelet starts it on the restored data
start_etcd() {
    move_manifests "$MANIFESTS_ASIDE" "$MANIFESTS" etcd
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

# Start the control plane: the other manifests go back
start_kubernetes() {
    move_manifests "$MANIFESTS_ASIDE" "$MANIFESTS" $CONTROL_PLANE
    rmdir "$MANIFESTS_ASIDE" 2>/dev/null || say "$MANIFESTS_ASIDE holds files not ours"
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
