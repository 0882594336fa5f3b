"""The disaster-recovery runbook of a cluster, as exact commands in order (pure text)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

KUBERNETES_UNITS = "kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy"


@dataclass(frozen=True)
class RunbookMember:
    name: str
    peer_url: str
    client_url: str


@dataclass(frozen=True)
class Runbook:
    members: list[RunbookMember]
    snapshot: str
    data_dir: str
    token: str
    restore_tool: str
    etcdctl: str

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> str:
        return ",".join(m.client_url for m in self.members)

    def restore_command(self, member: RunbookMember) -> str:
        return " ".join(
            [
                "ETCDCTL_API=3" if self.restore_tool.endswith("etcdctl") else "",
                shlex.quote(self.restore_tool),
                "snapshot restore",
                shlex.quote(self.snapshot),
                f"--name={shlex.quote(member.name)}",
                f"--initial-cluster={shlex.quote(self.initial_cluster)}",
                f"--initial-cluster-token={shlex.quote(self.token)}",
                f"--initial-advertise-peer-urls={shlex.quote(member.peer_url)}",
                f"--data-dir={shlex.quote(self.data_dir)}",
            ]
        ).strip()

    def move_aside_command(self) -> str:
        data = shlex.quote(self.data_dir)
        stamp = '"$(date -u +%Y%m%dT%H%M%SZ)"'
        return f"if [ -e {data} ]; then mv {data} {data}.before-restore-{stamp}; fi"

    def checks(self) -> list[str]:
        ctl = f"ETCDCTL_API=3 {shlex.quote(self.etcdctl)} --endpoints={shlex.quote(self.endpoints)}"
        return [
            f"{ctl} endpoint health",
            f"{ctl} endpoint status -w table",
            f"{ctl} member list -w table",
        ]


def render_markdown(book: Runbook) -> str:
    lines = [
        "# Restoring the etcd cluster from a snapshot",
        "",
        f"Snapshot: `{book.snapshot}` (on every member). New cluster token: `{book.token}`.",
        f"Members: {', '.join(f'{m.name} ({m.peer_url})' for m in book.members)}.",
        "",
        "## 1. Stop Kubernetes on every control-plane node",
        "```sh",
        f"systemctl stop {KUBERNETES_UNITS}",
        "```",
        "(Static pods: move their manifests out of /etc/kubernetes/manifests instead.)",
        "",
        "## 2. Stop etcd on every member",
        "```sh",
        "systemctl stop etcd",
        "```",
        "",
        "## 3. Check the snapshot on every member",
        "```sh",
        f"etcd-backupd verify {shlex.quote(book.snapshot)}",
        "```",
        "",
        "## 4. Restore on every member (its own name and peer URL, the same token)",
    ]
    for member in book.members:
        lines += [
            f"On {member.name}:",
            "```sh",
            book.move_aside_command(),
            book.restore_command(member),
            "```",
        ]
    lines += [
        "",
        "## 5. Start etcd on every member",
        "```sh",
        "systemctl start etcd",
        "```",
        "",
        "## 6. Check etcd",
        "```sh",
        *book.checks(),
        "```",
        "",
        "## 7. Start Kubernetes again on every control-plane node",
        "```sh",
        f"systemctl start {KUBERNETES_UNITS}",
        "```",
        "",
        "## 8. Check the cluster",
        "```sh",
        "kubectl get --raw /readyz",
        "kubectl get nodes",
        "kubectl get pods --all-namespaces",
        "```",
    ]
    return "\n".join(lines)


def render_scripts(book: Runbook) -> dict[str, str]:
    """One script per member; each stops, restores and starts that member, then checks."""
    scripts = {}
    for member in book.members:
        scripts[member.name] = "\n".join(
            [
                "#!/bin/sh",
                f"# etcd restore of member {member.name}, token {book.token}",
                "# Run on every member at the same time; each waits for the others at the checks.",
                "set -eu",
                f"systemctl stop {KUBERNETES_UNITS} || true",
                "systemctl stop etcd",
                f"etcd-backupd verify {shlex.quote(book.snapshot)}",
                book.move_aside_command(),
                book.restore_command(member),
                "systemctl start etcd",
                *book.checks(),
                f"systemctl start {KUBERNETES_UNITS}",
                "",
            ]
        )
    return scripts
