"""What ships beside the package: systemd units, Kubernetes manifests, alert rules, dashboards."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"
KUBERNETES = REPO / "deploy" / "kubernetes"
PROMETHEUS = REPO / "deploy" / "prometheus"
GRAFANA = REPO / "deploy" / "grafana"
UNITS = ["etcd-backupd.service", "etcd-backupd-once.service", "etcd-backupd-once.timer"]


def need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} not installed")
    return found


@pytest.fixture
def units(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointing at this venv's etcd-backupd, which verify requires."""
    command = Path(sys.executable).with_name("etcd-backupd")
    copies = []
    for unit in UNITS:
        text = (SYSTEMD / unit).read_text().replace("/usr/local/bin/etcd-backupd", str(command))
        copy = tmp_path / unit
        copy.write_text(text)
        copies.append(copy)
    return copies


def test_systemd_units_verify(units: list[Path]) -> None:
    analyze = need("systemd-analyze")
    result = subprocess.run(
        [analyze, "verify", *map(str, units)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


@pytest.mark.parametrize("unit", ["etcd-backupd.service", "etcd-backupd-once.service"])
def test_systemd_hardening_rates_two_or_lower(units: list[Path], unit: str) -> None:
    analyze = need("systemd-analyze")
    path = next(u for u in units if u.name == unit)
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert match, result.stdout[-500:] + result.stderr
    assert float(match.group(1)) <= 2.0


def directives(unit: Path, key: str) -> list[str]:
    return [
        word
        for line in unit.read_text().splitlines()
        if line.startswith(f"{key}=")
        for word in line.split("=", 1)[1].split()
    ]


@pytest.mark.parametrize("unit", ["etcd-backupd.service", "etcd-backupd-once.service"])
def test_units_need_no_group_the_host_may_lack(unit: str) -> None:
    # kubeadm hosts have no etcd group; systemd refuses to start a unit naming a missing one
    sysusers = (SYSTEMD / "etcd-backupd.sysusers.conf").read_text().splitlines()
    ours = {line.split()[1] for line in sysusers if line.startswith(("u ", "g "))}
    assert set(directives(SYSTEMD / unit, "SupplementaryGroups")) <= ours


def test_read_write_paths_exist_once_installed(tmp_path: Path) -> None:
    """What a unit must find exists on a fresh host after sysusers and tmpfiles ran."""
    sysusers, tmpfiles = need("systemd-sysusers"), need("systemd-tmpfiles")
    if os.geteuid() != 0:
        pytest.skip("creating directories owned by etcd-backupd needs root")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for tool, conf in [(sysusers, "etcd-backupd.sysusers.conf"),
                       (tmpfiles, "etcd-backupd.tmpfiles.conf")]:  # fmt: skip
        args = [tool, f"--root={root}", *(["--create"] if tool == tmpfiles else [])]
        done = subprocess.run([*args, str(SYSTEMD / conf)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    uid = next(
        int(line.split(":")[2])
        for line in (root / "etc" / "passwd").read_text().splitlines()
        if line.startswith("etcd-backupd:")
    )
    for unit in ["etcd-backupd.service", "etcd-backupd-once.service"]:
        required = [p for p in directives(SYSTEMD / unit, "ReadWritePaths") if p[0] != "-"]
        assert required, unit
        for path in required:
            made = root / path.lstrip("/")
            assert made.is_dir(), f"{unit}: {path} is not created"
            assert made.stat().st_uid == uid


def test_kubeadm_drop_in_verifies_and_keeps_the_sandbox(tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    command = Path(sys.executable).with_name("etcd-backupd")
    for unit in ["etcd-backupd.service", "etcd-backupd-once.service"]:
        text = (SYSTEMD / unit).read_text().replace("/usr/local/bin/etcd-backupd", str(command))
        (tmp_path / unit).write_text(text)
        drop_ins = tmp_path / f"{unit}.d"
        drop_ins.mkdir()
        shutil.copy(SYSTEMD / "kubeadm.conf", drop_ins / "kubeadm.conf")
        env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}
        verified = subprocess.run([analyze, "verify", str(tmp_path / unit)], env=env,
                                  capture_output=True, text=True, check=False)  # fmt: skip
        assert verified.returncode == 0 and verified.stderr.strip() == "", verified.stderr
        rated = subprocess.run([analyze, "security", "--offline=true", str(tmp_path / unit)],
                               env=env, capture_output=True, text=True, check=False)  # fmt: skip
        match = re.search(r"Overall exposure level for \S+: ([\d.]+)", rated.stdout)
        assert match and float(match.group(1)) <= 2.0, rated.stdout[-500:]
    credentials = directives(SYSTEMD / "kubeadm.conf", "LoadCredential")
    assert {c.split(":", 1)[1] for c in credentials} == {
        "/etc/kubernetes/pki/etcd/ca.crt",
        "/etc/kubernetes/pki/etcd/healthcheck-client.crt",
        "/etc/kubernetes/pki/etcd/healthcheck-client.key",
    }


def test_service_speaks_notify_and_reloads() -> None:
    text = (SYSTEMD / "etcd-backupd.service").read_text()
    assert "Type=notify" in text
    assert "WatchdogSec=" in text
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert "User=etcd-backupd" in text


def test_kubernetes_manifests_validate() -> None:
    validate = Path(sys.executable).with_name("kubernetes-validate")
    manifests = sorted(KUBERNETES.glob("*.yaml"))
    result = subprocess.run(
        [str(validate), "--strict", *map(str, manifests)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == 6, result.stdout
    # kubernetes-validate knows the core API only; these two kinds are CRDs / tool config
    unchecked = [line for line in result.stdout.splitlines() if line.startswith("WARN")]
    assert len(unchecked) == 2
    assert all("ServiceMonitor" in w or "Kustomization" in w for w in unchecked)


def test_kustomization_lists_existing_files() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (KUBERNETES / resource).is_file(), resource


def test_cronjob_shape() -> None:
    cronjob = yaml.safe_load((KUBERNETES / "cronjob.yaml").read_text())
    spec = cronjob["spec"]
    assert spec["schedule"] == "0 */12 * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert any(t["key"] == "node-role.kubernetes.io/control-plane" for t in pod["tolerations"])
    container = pod["containers"][0]
    assert any(a.startswith("--pushgateway=") for a in container["args"])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    certs = next(v for v in container["volumeMounts"] if v["name"] == "etcd-certs")
    assert certs["readOnly"] is True


def test_alert_rules_check_and_pass_their_tests() -> None:
    promtool = need("promtool")
    rules = PROMETHEUS / "etcd-backupd.rules.yml"
    checked = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "etcd-backupd.rules.test.yml"],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    names = {r["alert"] for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"]}
    assert names == {
        "EtcdBackupStale",
        "EtcdBackupNeverSucceeded",
        "EtcdBackupNotPushed",
        "EtcdBackupFailing",
        "EtcdBackupAbsent",
        "EtcdBackupDestinationStale",
        "EtcdBackupKeysDrop",
        "EtcdBackupFutureDated",
        "EtcdBackupFutureSnapshots",
        "EtcdBackupDrillFailing",
    }


def test_prometheus_rule_resource_holds_the_same_rules() -> None:
    plain = yaml.safe_load((PROMETHEUS / "etcd-backupd.rules.yml").read_text())
    resource = yaml.safe_load((PROMETHEUS / "prometheusrule.yaml").read_text())
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"] == plain


def test_grafana_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = need("promtool")
    dashboard = json.loads((GRAFANA / "etcd-backupd-dashboard.json").read_text())
    alerting = yaml.safe_load((GRAFANA / "alerting.yaml").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [
        d["model"]["expr"]
        for g in alerting["groups"]
        for r in g["rules"]
        for d in r["data"]
        if "expr" in d["model"]
    ]
    assert len(exprs) >= 10
    rules = {
        "groups": [
            {
                "name": "grafana",
                "rules": [
                    {"record": f"grafana:query{i}", "expr": e.replace("$__rate_interval", "5m")}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    used = " ".join(exprs)
    for metric in (
        "etcd_backup_last_success_timestamp_seconds",
        "etcd_backup_schedule_interval_seconds",
        "etcd_backup_last_live_keys",
        "etcd_backup_last_size_bytes",
        "etcd_backup_last_keys",
        "etcd_backup_duration_seconds",
        "etcd_backup_failures_total",
        "etcd_backup_destination_snapshots",
    ):
        assert metric in used


def test_grafana_alerts_are_the_paging_rules_per_cluster() -> None:
    plain = yaml.safe_load((PROMETHEUS / "etcd-backupd.rules.yml").read_text())
    severity = {r["alert"]: r["labels"]["severity"] for g in plain["groups"] for r in g["rules"]}
    alerting = yaml.safe_load((GRAFANA / "alerting.yaml").read_text())
    rules = [r for g in alerting["groups"] for r in g["rules"]]
    assert {r["title"] for r in rules} == {
        "EtcdBackupStale",
        "EtcdBackupNeverSucceeded",
        "EtcdBackupAbsent",
    }
    for rule in rules:
        assert rule["labels"]["severity"] == severity[rule["title"]]
        queries = [d["model"]["expr"] for d in rule["data"] if "expr" in d["model"]]
        assert queries and all("by (cluster_id" in q for q in queries), rule["title"]


def test_grafana_alerts_fire_as_the_prometheus_rules_do(tmp_path: Path) -> None:
    """Grafana's queries, each with its threshold, run through the promtool cases of the rule
    of the same name: they fire for the same clusters at the same times. (The case without any
    series at all is Grafana's noDataState.)"""
    promtool = need("promtool")
    alerting = yaml.safe_load((GRAFANA / "alerting.yaml").read_text())
    operators = {"gt": ">", "lt": "<"}
    rules = []
    for rule in (r for g in alerting["groups"] for r in g["rules"]):
        steps = {d["refId"]: d["model"] for d in rule["data"]}
        (evaluator,) = [c["evaluator"] for c in steps[rule["condition"]]["conditions"]]
        query = steps[steps[rule["condition"]]["expression"]]["expr"]
        rules.append(
            {
                "alert": rule["title"],
                "expr": f"({query}) {operators[evaluator['type']]} {evaluator['params'][0]}",
                "for": rule["for"],
                "labels": rule["labels"],
            }
        )
    (tmp_path / "grafana.rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]})
    )
    plain = yaml.safe_load((PROMETHEUS / "etcd-backupd.rules.test.yml").read_text())
    names = {r["alert"] for r in rules}
    cases = []
    for case in plain["tests"]:
        checks = [
            {
                **check,
                "exp_alerts": [
                    {"exp_labels": alert["exp_labels"]}
                    for alert in check["exp_alerts"]
                    if "cluster_id" in alert["exp_labels"]
                ],
            }
            for check in case["alert_rule_test"]
            if check["alertname"] in names
        ]
        if checks:
            cases.append({**case, "alert_rule_test": checks})
    assert len(cases) >= 5
    (tmp_path / "grafana.test.yml").write_text(
        yaml.safe_dump(
            {
                "rule_files": ["grafana.rules.yml"],
                "evaluation_interval": plain["evaluation_interval"],
                "tests": cases,
            }
        )
    )
    tested = subprocess.run(
        [promtool, "test", "rules", "grafana.test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
