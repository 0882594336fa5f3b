"""The disaster-recovery runbook of a cluster, as exact commands in order (pure text).

The same steps make the Markdown runbook and the per-member shell scripts. Each step is a shell
function of the script, so an operator can resume from a step (and a test can run the steps that
do not stop or start services) with the script exactly as written."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Literal

from .errors import BackupError, ConfigError

Layout = Literal["kubeadm", "systemd"]
LAYOUTS: tuple[Layout, ...] = ("kubeadm", "systemd")
KUBEADM_MANIFESTS = "/etc/kubernetes/manifests"
KUBEADM_ETCD_MANIFEST = f"{KUBEADM_MANIFESTS}/etcd.yaml"
KUBERNETES_UNITS = "kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy"
CONTROL_PLANE_PODS = "kube-apiserver kube-controller-manager kube-scheduler"
# far past the revisions written between a snapshot and a disaster, as etcd's own recovery guide
# bumps (its op-guide page on disaster recovery), and far below int64's end
DEFAULT_BUMP_REVISION = 1_000_000_000


@dataclass(frozen=True)
class RunbookMember:
    name: str
    peer_url: str
    client_url: str


def parse_urls(items: list[str], option: str) -> dict[str, str]:
    """The NAME=URL values of a repeated option (--member, --client-url), by name; each URL is
    checked as the config's [restore] tables check theirs."""
    # config brings pydantic; every command's parser imports this module (restore-plan's defaults)
    from .config import restore_url_problem
    from .config_base import NAME_RE, NAME_RULE

    found = {}
    for item in items:
        name, sep, url = item.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise BackupError(f"{option} {item!r} is not NAME=URL")
        # a member's script is restore-NAME.sh: a name with '/' or a leading '.' would be
        # written outside --script-dir or hidden in it
        if not NAME_RE.match(name):
            raise ConfigError(f"{option} member name {name!r} {NAME_RULE}")
        problem = restore_url_problem(name, url)
        if problem:
            raise ConfigError(f"{option} {problem}")
        found[name] = url
    return found


def runbook_members(peers: dict[str, str], clients: dict[str, str]) -> list[RunbookMember]:
    """The members by their peer URLs; one without a client URL is checked at its peer host,
    port 2379."""
    members = []
    for name, peer in peers.items():
        host = peer.split("://", 1)[1].rsplit(":", 1)[0]
        scheme = peer.split("://", 1)[0]
        members.append(RunbookMember(name, peer, clients.get(name, f"{scheme}://{host}:2379")))
    return members


@dataclass(frozen=True)
class SnapshotSource:
    """A snapshot file already on every member, or a snapshot in a destination of a config."""

    snapshot: str
    config: str | None = None
    destination: str | None = None


@dataclass(frozen=True)
class EtcdAccess:
    """How etcdctl reaches the restored cluster: TLS files, and a user whose password is read
    when the script runs, never written into it."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password_file: str | None = None


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    body: list[str]


@dataclass(frozen=True)
class Runbook:
    members: list[RunbookMember]
    source: SnapshotSource
    layout: Layout
    data_dir: str
    token: str
    etcdctl: str = "etcdctl"
    etcd_bin_dir: str | None = None
    data_dir_owner: str | None = None
    access: EtcdAccess = EtcdAccess()
    health_timeout: int = 300
    # 0: no bump
    bump_revision: int = DEFAULT_BUMP_REVISION

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> str:
        return ",".join(m.client_url for m in self.members)

    def member_settings(self, member: RunbookMember) -> list[str]:
        return [
            f"MEMBER_NAME={shlex.quote(member.name)}",
            f"PEER_URL={shlex.quote(member.peer_url)}",
        ]

    def settings(self) -> list[str]:
        def line(name: str, value: str | int | None, why: str = "") -> list[str]:
            if value is None:
                return []
            quoted = shlex.quote(str(value)) if isinstance(value, str) else str(value)
            return [f"{name}={quoted}" + (f"  # {why}" if why else "")]

        access = self.access
        lines = [
            *line("INITIAL_CLUSTER", self.initial_cluster),
            *line("TOKEN", self.token, "the same on every member: it comes from the snapshot"),
            *line(
                "BUMP_REVISION",
                self.bump_revision,
                "the same on every member; 0: no bump (for an etcdutl before 3.5.10)",
            ),
            *line("ENDPOINTS", self.endpoints),
            *line("SNAPSHOT", self.source.snapshot),
            *line("CONFIG", self.source.config),
            *line("DESTINATION", self.source.destination),
            *line("DATA_DIR", self.data_dir),
            *line("STAGING", f"{self.data_dir}.restoring", "restored here while etcd still runs"),
            *line(
                "DATA_DIR_OWNER",
                self.data_dir_owner or "",
                "user[:group] of the restored data dir; empty: the old data dir's owner",
            ),
            *line("ETCD_BACKUPD", "etcd-backupd"),
            *line("ETCD_BIN_DIR", self.etcd_bin_dir, "etcdutl (or 3.4's etcdctl) for the restore"),
            *line("ETCDCTL", self.etcdctl),
            *line("ETCD_CACERT", access.cacert),
            *line("ETCD_CERT", access.cert),
            *line("ETCD_KEY", access.key),
            *line("ETCD_USER", access.user),
            *line(
                "ETCD_PASSWORD_FILE",
                access.password_file,
                "read when needed; ETCD_BACKUPD_ETCD_PASSWORD in the environment wins",
            ),
            *line("HEALTH_TIMEOUT", self.health_timeout, "seconds to wait for every member"),
            *line("POLL_INTERVAL", 2),
        ]
        if self.layout == "kubeadm":
            lines += [
                *line("MANIFESTS", KUBEADM_MANIFESTS),
                *line(
                    "MANIFESTS_ASIDE",
                    "/etc/kubernetes/manifests-stopped-for-restore",
                    "outside MANIFESTS: the kubelet runs every file there",
                ),
                *line("CONTROL_PLANE", CONTROL_PLANE_PODS),
                *line("STOP_TIMEOUT", 120, "seconds for the kubelet to stop a static pod"),
            ]
        else:
            lines += [
                *line("ETCD_UNIT", "etcd"),
                *line("KUBERNETES_UNITS", KUBERNETES_UNITS, "those present are stopped/started"),
            ]
        return lines

    def helpers(self) -> list[str]:
        access = self.access
        flags = "".join(
            f" {flag}"
            for flag, value in (
                ('--cacert="$ETCD_CACERT"', access.cacert),
                ('--cert="$ETCD_CERT"', access.cert),
                ('--key="$ETCD_KEY"', access.key),
                ('--user="$ETCD_USER"', access.user),
            )
            if value is not None
        )
        password = ""
        if access.user is not None:
            missing = (
                'ETCDCTL_PASSWORD=$(cat "$ETCD_PASSWORD_FILE") ||\n'
                '            fail "cannot read the password of $ETCD_USER from $ETCD_PASSWORD_FILE"'
                if access.password_file is not None
                else 'fail "set ETCD_BACKUPD_ETCD_PASSWORD to the etcd password of $ETCD_USER"'
            )
            password = _PASSWORD.format(missing=missing)
        text = _HELPERS.format(password=password, flags=flags)
        if self.layout == "kubeadm":
            text += _KUBEADM_HELPERS
        return text.splitlines()

    def restore_command(self) -> str:
        source = (
            '--config "$CONFIG" --destination "$DESTINATION" --snapshot "$SNAPSHOT"'
            if self.source.destination is not None
            else '"$SNAPSHOT"'
        )
        bin_dir = ' --etcd-bin-dir "$ETCD_BIN_DIR"' if self.etcd_bin_dir else ""
        why = [f"BUMP_REVISION: {BUMP_WHY}.", f"Without the flags: {BUMP_FALLBACK}."]
        bump_why = "\n".join(f"# {line}" for text in why for line in _wrap(text))
        return _RESTORE.format(source=source, bin_dir=bin_dir, bump_why=bump_why)

    def steps(self) -> list[Step]:
        fetch = "Fetch, verify" if self.source.destination is not None else "Verify"
        prepare = Step(
            "prepare",
            f"{fetch} the snapshot and restore it beside the data dir, while etcd still runs",
            self.restore_command().splitlines(),
        )
        swap = Step(
            "swap_data_dir",
            "Move the old data dir aside and the restored one into its place",
            _SWAP.splitlines(),
        )
        wait = Step(
            "wait_healthy",
            "Wait until every member is healthy (the other members restore meanwhile)",
            _WAIT_HEALTHY.splitlines(),
        )
        checks = Step(
            "checks",
            "Check etcd: status and members",
            ["ctl endpoint status -w table", "ctl member list -w table"],
        )
        services = _KUBEADM_STEPS if self.layout == "kubeadm" else _SYSTEMD_STEPS
        stop_kubernetes, stop_etcd, start_etcd, start_kubernetes = (
            Step(name, title, body.splitlines()) for name, title, body in services
        )
        return [
            prepare,
            stop_kubernetes,
            stop_etcd,
            swap,
            start_etcd,
            wait,
            checks,
            start_kubernetes,
        ]

    def describe_source(self) -> str:
        if self.source.destination is not None:
            return (
                f"`{self.source.snapshot}` from destination `{self.source.destination}` of "
                f"`{self.source.config}`"
            )
        return f"`{self.source.snapshot}` (copy it to the same path on every member)"


def _wrap(text: str, width: int = 96) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def render_markdown(book: Runbook) -> str:
    layout = (
        "kubeadm (etcd and the control plane are static pods)"
        if book.layout == "kubeadm"
        else "systemd (etcd and Kubernetes are systemd services)"
    )
    lines = [
        "# Restoring the etcd cluster from a snapshot",
        "",
        f"Snapshot: {book.describe_source()}. Layout: {layout}.",
        f"New cluster token: `{book.token}` (from the snapshot's name, the same on every member).",
        (
            f"Revision bump: `{book.bump_revision}` on every member (`--bump-revision "
            f"--mark-compacted`): {BUMP_WHY}."
            f" Without the bump: {BUMP_FALLBACK}."
            if book.bump_revision
            else f"Revision bump: none (`--no-bump`): {RESTART_WATCHERS}."
        ),
        f"Members: {', '.join(f'{m.name} ({m.peer_url})' for m in book.members)}.",
        "",
        "Run the steps on every member at about the same time; `restore-plan --output script` "
        "writes them as one script per member (`restore-NAME.sh STEP...` runs only the named "
        "steps, to resume after fixing a failure).",
        "",
        "Each member's name and peer URL must be those its etcd runs with (kubeadm: `--name` "
        f"and `--initial-advertise-peer-urls` in {KUBEADM_ETCD_MANIFEST}); etcd ignores its "
        "`--initial-cluster*` flags once its data dir holds a member, so they stay as they are.",
        "",
        "## Settings",
    ]
    for member in book.members:
        lines += [f"On {member.name}:", "```sh", *book.member_settings(member), "```"]
    lines += ["On every member:", "```sh", *book.settings(), "", *book.helpers(), "```"]
    steps = book.steps()
    for number, step in enumerate(steps, start=1):
        lines += ["", f"## {number}. {step.title} (`{step.name}`)", "```sh", *step.body, "```"]
    lines += [
        "",
        f"## {len(steps) + 1}. Check the cluster",
        "```sh",
        "kubectl get --raw /readyz",
        "kubectl get nodes",
        "kubectl get pods --all-namespaces",
        "```",
    ]
    return "\n".join(lines)


def _function(step: Step) -> list[str]:
    body = [f"    {line}" if line else "" for line in "\n".join(step.body).split("\n")]
    return [f"# {step.title}", f"{step.name}() {{", *body, "}", ""]


def render_scripts(book: Runbook) -> dict[str, str]:
    """One script per member: the settings, a shell function per step, and a runner."""
    scripts = {}
    steps = book.steps()
    names = " ".join(step.name for step in steps)
    for member in book.members:
        lines = [
            "#!/bin/sh",
            f"# Restore etcd member {member.name} ({book.layout} layout) from "
            f"{book.source.snapshot}, cluster token {book.token}.",
            "# Run it on every member at about the same time: after starting etcd it waits up to",
            "# HEALTH_TIMEOUT seconds for every member to be healthy.",
            f"# sh {shlex.quote(f'restore-{member.name}.sh')} runs every step in order; naming "
            "steps runs only those (to resume):",
            f"#   {names}",
            "set -eu",
            "",
            "# Settings: adjust them here if this host differs.",
            *book.member_settings(member),
            *book.settings(),
            "",
            *book.helpers(),
            "",
            *[line for step in steps for line in _function(step)],
            _RUNNER.format(steps=shlex.quote(names)),
        ]
        scripts[member.name] = "\n".join(lines)
    return scripts


# The shell text of the steps and helpers: POSIX sh, every wait bounded.
_PASSWORD = """\
    # the password travels in the environment, never on a command line
    ETCDCTL_PASSWORD="${{ETCD_BACKUPD_ETCD_PASSWORD:-}}"
    if [ -z "$ETCDCTL_PASSWORD" ]; then
        {missing}
    fi
    export ETCDCTL_PASSWORD
"""

_HELPERS = """\
say() {{ printf '%s\\n' "$*"; }}
fail() {{ printf 'FAILED: %s\\n' "$*" >&2; exit 1; }}

ctl() {{
{password}\
    ETCDCTL_API=3 "$ETCDCTL" --endpoints="$ENDPOINTS"{flags} "$@"
}}
"""

_KUBEADM_HELPERS = r"""
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
"""

_RESTORE = """\
# decompressed and verified (against its manifest's SHA-256 when fetched) before anything is
# stopped; a STAGING left by an earlier run is moved aside
{bump_why}
if [ "$BUMP_REVISION" != 0 ]; then set -- --bump-revision "$BUMP_REVISION" --mark-compacted; fi
"$ETCD_BACKUPD" restore {source} \\
    --data-dir "$STAGING" --force --name "$MEMBER_NAME" \\
    --initial-cluster "$INITIAL_CLUSTER" --initial-cluster-token "$TOKEN" \\
    --initial-advertise-peer-urls "$PEER_URL"{bin_dir} "$@"\
"""
# one line each: why the bump, and what to do without it
BUMP_WHY = "the revision jumps past any a client saw, so Kubernetes' watches re-list"
RESTART_WATCHERS = (
    "once etcd is back, restart the kubelet on every node and every controller outside the "
    "control plane, so that none keeps watching revisions from before the restore"
)
BUMP_FALLBACK = (
    "an etcdutl before 3.5.10 (or 3.4's etcdctl) lacks --bump-revision and --mark-compacted, "
    "and the restore refuses them before touching anything: set BUMP_REVISION=0 (or make the "
    f"plan with --no-bump) and, {RESTART_WATCHERS}"
)

_SWAP = """\
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
if [ -n "$owner" ]; then chown -R "$owner" "$DATA_DIR"; fi"""

_WAIT_HEALTHY = """\
deadline=$(( $(date +%s) + HEALTH_TIMEOUT ))
until answer=$(ctl endpoint health 2>&1); do
    [ "$(date +%s)" -lt "$deadline" ] || fail "etcd is not healthy on every member after" \\
        "$HEALTH_TIMEOUT s (is the restore running on every member?): $answer"
    sleep "$POLL_INTERVAL"
done
say "$answer\""""

# (step, title, body) of the steps that stop and start services, per layout
_KUBEADM_STEPS = [
    (
        "stop_kubernetes",
        "Stop the control plane: its static pod manifests leave the kubelet's directory",
        'move_manifests "$MANIFESTS" "$MANIFESTS_ASIDE" $CONTROL_PLANE\n'
        "wait_stopped $CONTROL_PLANE",
    ),
    (
        "stop_etcd",
        "Stop etcd: its static pod manifest leaves too",
        'move_manifests "$MANIFESTS" "$MANIFESTS_ASIDE" etcd\nwait_stopped etcd',
    ),
    (
        "start_etcd",
        "Start etcd: its manifest goes back, and the kubelet starts it on the restored data",
        'move_manifests "$MANIFESTS_ASIDE" "$MANIFESTS" etcd',
    ),
    (
        "start_kubernetes",
        "Start the control plane: the other manifests go back",
        'move_manifests "$MANIFESTS_ASIDE" "$MANIFESTS" $CONTROL_PLANE\n'
        'rmdir "$MANIFESTS_ASIDE" 2>/dev/null || say "$MANIFESTS_ASIDE holds files not ours"',
    ),
]
_SYSTEMD_STEPS = [
    (
        "stop_kubernetes",
        "Stop Kubernetes",
        "for unit in $KUBERNETES_UNITS; do\n"
        '    if systemctl is-active --quiet "$unit"; then systemctl stop "$unit"; fi\n'
        "done",
    ),
    ("stop_etcd", "Stop etcd", 'systemctl stop "$ETCD_UNIT"'),
    (
        "start_etcd",
        "Start etcd",
        "# without waiting: a Type=notify etcd has started only once it has a quorum, which\n"
        "# needs the other members; wait_healthy waits for that, with a bound\n"
        'systemctl start --no-block "$ETCD_UNIT"',
    ),
    (
        "start_kubernetes",
        "Start Kubernetes again",
        "for unit in $KUBERNETES_UNITS; do\n"
        '    if systemctl is-enabled --quiet "$unit" 2>/dev/null; then\n'
        '        systemctl start "$unit"\n'
        "    fi\n"
        "done",
    ),
]

_RUNNER = """\
STEPS={steps}
remaining=''
resume_hint() {{
    if [ "$1" -ne 0 ] && [ -n "$remaining" ]; then
        printf 'stopped in step %s; once its cause is fixed, resume with: sh %s %s\\n' \\
            "${{remaining%% *}}" "$0" "$remaining" >&2
    fi
}}
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
"""
