"""deploy/k8s without a cluster: every overlay renders with `kubectl kustomize`, every object
validates against its schema, and the policies the design relies on hold (restricted Pod
Security, GPU limit, gRPC health probes, h2c, cold-start budgets, drain, scale to zero, no
secrets). The overlays' values.yaml files are tested in test_values.py."""

import copy
import json
import re
import shutil

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, latest_version

from rendering import (K8S, OVERLAYS, REPO, env_of, find, group_of, kustomize, load_yaml, one, pod_templates,
                      seconds, values_of, worker_container)

# Oldest Kubernetes the manifests support: native gRPC probes (1.27) and the preStop sleep
# action (beta, on by default, in 1.30). Also validated against the newest schema bundled.
MIN_KUBERNETES = "1.30"

# Custom resources and the JSON Schema each validates against (deploy/k8s/schemas/SOURCES.md).
CRD_SCHEMAS = {
    ("keda.sh", "ScaledObject"): "keda.sh_scaledobject_v1alpha1.json",
    ("http.keda.sh", "InterceptorRoute"): "http.keda.sh_interceptorroute_v1beta1.json",
    ("serving.knative.dev", "Service"): "serving.knative.dev_service_v1.json",
}

# What each overlay must contain, by schema source; a kind missing here was dropped or never
# rendered, and a kind not listed fails until it is given a schema.
EXPECTED_CORE_KINDS = {
    "keda": {"Namespace", "ServiceAccount", "Deployment", "Service", "PodDisruptionBudget"},
    "knative": {"Namespace", "ServiceAccount"},
    "always-on": {"Namespace", "ServiceAccount", "Deployment", "Service", "PodDisruptionBudget",
                  "HorizontalPodAutoscaler"},
}
EXPECTED_CUSTOM_KINDS = {
    "keda": {"ScaledObject", "InterceptorRoute"},
    "knative": {"Service"},
    "always-on": set(),
}

# Volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                           "persistentVolumeClaim", "projected", "secret"}

# Ports queue-proxy and Knative's profiler own inside a Knative pod.
KNATIVE_RESERVED_PORTS = {8008, 8012, 8013, 8022, 9090, 9091}

HEALTH_SERVICE = "ember.v1.Inference"
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN")


def is_custom(obj: dict) -> bool:
    return (group_of(obj), obj["kind"]) in CRD_SCHEMAS


def schema_for(obj: dict) -> dict:
    return json.loads((K8S / "schemas" / CRD_SCHEMAS[(group_of(obj), obj["kind"])]).read_text())


def hold_seconds(budget: dict) -> float:
    """A request arriving at zero replicas waits for scheduling, image pull and the cold start."""
    return budget["maxColdStartSeconds"] + budget["schedulingAndPullSeconds"]


def probe_budget(probe: dict) -> float:
    return probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


def drain_seconds(container: dict) -> float:
    return float(env_of(container)["EMBER_DRAIN_TIMEOUT_S"])


def pre_stop_seconds(container: dict) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if pre_stop is None:
        return 0
    assert set(pre_stop) == {"sleep"}, f"preStop must be a plain sleep, got {pre_stop}"
    return pre_stop["sleep"]["seconds"]


def worker_service(objects: list[dict]) -> dict:
    """The core Service in front of the worker pods (keda also has the ExternalName entry)."""
    return next(s for s in find(objects, "Service", "") if s["metadata"]["name"] == "ember-worker")


def serving_port(container: dict) -> dict:
    ports = [p for p in container["ports"] if p["name"] in ("grpc", "h2c")]
    assert len(ports) == 1, f"expected one gRPC port named grpc or h2c, got {container['ports']}"
    return ports[0]


# --- rendering and schemas ----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_expected_objects_in_its_namespace(rendered, overlay):
    objects = rendered[overlay]
    assert {obj["kind"] for obj in objects if not is_custom(obj)} == EXPECTED_CORE_KINDS[overlay]
    assert {obj["kind"] for obj in objects if is_custom(obj)} == EXPECTED_CUSTOM_KINDS[overlay]
    assert not find(objects, "Values"), "values.yaml must stay local (config.kubernetes.io/local-config)"
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == one(objects, "Namespace")["metadata"]["name"], obj["kind"]
        assert "set-by-values" not in json.dumps(obj), f"{obj['kind']} keeps a placeholder: a value did not reach it"


@pytest.mark.parametrize("version", [MIN_KUBERNETES, latest_version()])
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_validate_against_kubernetes_schemas(rendered, overlay, version):
    validated = set()
    for obj in rendered[overlay]:
        if is_custom(obj):
            continue
        try:
            # strict: unknown fields fail too, so a misspelt field is caught.
            kubernetes_validate.validate(obj, version, strict=True)
        except SchemaNotFoundError:
            pytest.fail(f"no Kubernetes {version} schema for {obj['apiVersion']} {obj['kind']}: "
                        "not a core type, and not in CRD_SCHEMAS either")
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version} at "
                        f"{'.'.join(map(str, e.path))}: {e.message}")
        validated.add(obj["kind"])
    # kubernetes-validate's command line skips kinds it has no schema for (a warning); here a
    # missing schema fails above, and every core kind the overlay ships must have been checked.
    assert validated == EXPECTED_CORE_KINDS[overlay]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_validate_against_their_schemas(rendered, overlay):
    custom = [obj for obj in rendered[overlay] if is_custom(obj)]
    assert {obj["kind"] for obj in custom} == EXPECTED_CUSTOM_KINDS[overlay]
    for obj in custom:
        errors = sorted(jsonschema.Draft7Validator(schema_for(obj)).iter_errors(obj), key=str)
        assert not errors, f"{obj['kind']}: " + "; ".join(
            f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_custom_resource_schemas_reject_broken_objects(rendered):
    """The schema files are live: each rejects an object with a required field removed or a
    field of the wrong type (guards against a truncated or permissive schema file)."""
    scaled = copy.deepcopy(one(rendered["keda"], "ScaledObject"))
    del scaled["spec"]["triggers"]
    route = copy.deepcopy(one(rendered["keda"], "InterceptorRoute"))
    route["spec"]["scalingMetric"]["concurrency"]["targetValue"] = 0
    service = copy.deepcopy(one(rendered["knative"], "Service", "serving.knative.dev"))
    service["spec"]["template"]["spec"]["containerConcurrency"] = "sixty-four"
    for broken in (scaled, route, service):
        assert list(jsonschema.Draft7Validator(schema_for(broken)).iter_errors(broken)), broken["kind"]


# --- Pod Security, GPU, probes, ports --------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_meet_the_restricted_pod_security_standard(rendered, overlay):
    namespace = one(rendered[overlay], "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for name, template in pod_templates(rendered[overlay]):
        pod = template["spec"]
        pod_sc = pod.get("securityContext", {})
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(flag), f"{name}: {flag}"
        for volume in pod.get("volumes", []):
            types = set(volume) - {"name"}
            assert types <= RESTRICTED_VOLUME_TYPES, f"{name}: volume {volume['name']} is {types}"
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c.get("securityContext", {})
            where = f"{name} container {c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert not sc.get("privileged"), where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert set(sc.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, where
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
            assert seccomp in ("RuntimeDefault", "Localhost"), where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert not any("hostPort" in p for p in c.get("ports", [])), where
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp must be a writable emptyDir"
            assert volumes[mounts["/dev/shm"]]["emptyDir"].get("medium") == "Memory", where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_gets_the_configured_gpus_on_gpu_nodes(rendered, overlay):
    values = values_of(overlay)
    assert values["gpu"]["count"] >= 1
    for name, template in pod_templates(rendered[overlay]):
        c = worker_container(template)
        resources = c["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == values["gpu"]["count"], name
        # Extended resources: a request, if present, must equal the limit.
        assert resources.get("requests", {}).get("nvidia.com/gpu", values["gpu"]["count"]) == values["gpu"]["count"]
        assert template["spec"]["nodeSelector"] == values["gpu"]["nodeSelector"], name
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in template["spec"]["tolerations"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_grpc_health_on_the_serving_port(rendered, overlay):
    for name, template in pod_templates(rendered[overlay]):
        c = worker_container(template)
        port = serving_port(c)["containerPort"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c.get(kind)
            assert probe and set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, f"{name}: {kind}"
            assert probe["grpc"]["port"] == port, f"{name}: {kind} probes port {probe['grpc']['port']}, serving {port}"
        # Startup and readiness ask for the inference service itself: SERVING only when loaded.
        assert c["startupProbe"]["grpc"]["service"] == HEALTH_SERVICE
        assert c["readinessProbe"]["grpc"]["service"] == HEALTH_SERVICE
        env = env_of(c)
        if "EMBER_GRPC_PORT" in env:
            assert int(env["EMBER_GRPC_PORT"]) == port


@pytest.mark.parametrize("overlay", ["keda", "always-on"])
def test_service_carries_h2c_to_the_grpc_port_and_exposes_metrics(rendered, overlay):
    objects = rendered[overlay]
    service = worker_service(objects)
    template = one(objects, "Deployment")["spec"]["template"]
    c = worker_container(template)
    for key, value in service["spec"]["selector"].items():
        assert template["metadata"]["labels"].get(key) == value, "the Service selects no worker pods"
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    container_ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert container_ports[ports["grpc"]["targetPort"]] == int(env_of(c)["EMBER_GRPC_PORT"])
    metrics = container_ports[ports["metrics"]["targetPort"]]
    assert metrics == int(env_of(c)["EMBER_METRICS_PORT"])
    assert int(template["metadata"]["annotations"]["prometheus.io/port"]) == metrics
    assert template["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"


def test_knative_service_uses_one_h2c_port_and_knative_owned_env(rendered):
    service = one(rendered["knative"], "Service", "serving.knative.dev")
    template = service["spec"]["template"]
    c = worker_container(template)
    assert [p["name"] for p in c["ports"]] == ["h2c"], "Knative carries gRPC only on one port named h2c"
    env = env_of(c)
    # Knative sets PORT (reserved); the worker listens on it when EMBER_GRPC_PORT is unset.
    assert "PORT" not in env and "EMBER_GRPC_PORT" not in env
    metrics = int(env["EMBER_METRICS_PORT"])
    assert metrics not in KNATIVE_RESERVED_PORTS, f"metrics port {metrics} collides with queue-proxy"
    assert c["ports"][0]["containerPort"] not in KNATIVE_RESERVED_PORTS
    assert int(template["metadata"]["annotations"]["prometheus.io/port"]) == metrics
    assert "lifecycle" not in c, "no custom preStop: Knative injects its own drain"
    assert service["metadata"]["labels"].get("networking.knative.dev/visibility") == "cluster-local"


def test_knative_container_matches_the_deployment_container(rendered):
    """The Knative Service spells the worker out again; keep it in step with the base."""
    deployment = worker_container(one(rendered["keda"], "Deployment")["spec"]["template"])
    knative = worker_container(one(rendered["knative"], "Service", "serving.knative.dev")["spec"]["template"])
    differs_on_purpose = {"EMBER_GRPC_PORT", "EMBER_METRICS_PORT"}
    assert ({k: v for k, v in env_of(deployment).items() if k not in differs_on_purpose}
            == {k: v for k, v in env_of(knative).items() if k not in differs_on_purpose})
    assert deployment["resources"] == knative["resources"]
    assert deployment["volumeMounts"] == knative["volumeMounts"]
    assert deployment["image"] == knative["image"]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert deployment[kind]["grpc"] == knative[kind]["grpc"], kind
    assert probe_budget(deployment["startupProbe"]) == probe_budget(knative["startupProbe"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_request_held_at_zero_waits_little_after_serving(rendered, overlay):
    """From SERVING to Ready the held request waits for the next startup probe, then the
    next readiness probe: 1 s periods on the kubelet; on Knative the readiness probe has no
    period, so its queue-proxy probes every 50 ms."""
    for name, template in pod_templates(rendered[overlay]):
        c = worker_container(template)
        assert c["startupProbe"]["periodSeconds"] == 1, name
        if overlay == "knative":
            assert "periodSeconds" not in c["readinessProbe"], name
        else:
            assert c["readinessProbe"]["periodSeconds"] == 1, name


# --- cold start, drain ---------------------------------------------------------------------


def test_cold_start_budget_covers_its_derivation_and_is_documented(budget):
    derived = (budget["largestModelWeightsGB"] / budget["worstCaseStorageGBps"]
               + budget["cudaInitAndWarmupSeconds"]) * budget["safetyFactor"]
    assert budget["maxColdStartSeconds"] >= derived
    docs = (REPO / "docs" / "deploy.md").read_text()
    assert f"{budget['maxColdStartSeconds']} s" in docs, "docs/deploy.md must state the cold-start budget"
    assert f"{hold_seconds(budget)} s" in docs, "docs/deploy.md must state the request-holding timeout"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_startup_probe_allows_the_documented_cold_start(rendered, overlay, budget):
    for name, template in pod_templates(rendered[overlay]):
        startup = worker_container(template)["startupProbe"]
        assert probe_budget(startup) >= budget["maxColdStartSeconds"], name
    for deployment in find(rendered[overlay], "Deployment"):
        # A rollout's new pod pulls its image and cold-starts before it makes progress.
        assert deployment["spec"]["progressDeadlineSeconds"] >= hold_seconds(budget)


def test_keda_holds_requests_through_a_cold_start(rendered, budget):
    route = one(rendered["keda"], "InterceptorRoute")
    timeouts = route["spec"]["timeouts"]
    assert seconds(timeouts["readiness"]) >= hold_seconds(budget)
    assert seconds(timeouts["request"]) == 0 or seconds(timeouts["request"]) >= hold_seconds(budget)
    assert seconds(timeouts["responseHeader"]) == 0 or seconds(timeouts["responseHeader"]) >= budget["maxColdStartSeconds"]
    assert "coldStart" not in route["spec"], "a placeholder or fallback would answer instead of holding"
    scaled = one(rendered["keda"], "ScaledObject")
    assert scaled["spec"]["initialCooldownPeriod"] >= hold_seconds(budget)


def test_knative_deadlines_cover_a_cold_start(rendered, budget):
    template = one(rendered["knative"], "Service", "serving.knative.dev")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    spec = template["spec"]
    assert seconds(annotations["serving.knative.dev/progress-deadline"]) >= hold_seconds(budget)
    assert spec["responseStartTimeoutSeconds"] >= hold_seconds(budget)
    assert spec["timeoutSeconds"] >= spec["responseStartTimeoutSeconds"]


@pytest.mark.parametrize("overlay", ["keda", "always-on"])
def test_drain_finishes_inside_the_grace_period(rendered, overlay):
    template = one(rendered[overlay], "Deployment")["spec"]["template"]
    c = worker_container(template)
    needed = pre_stop_seconds(c) + drain_seconds(c)
    assert template["spec"]["terminationGracePeriodSeconds"] > needed
    # Health is NOT_SERVING while draining: liveness must not restart a draining worker.
    assert probe_budget(c["livenessProbe"]) > needed


def test_knative_drain_finishes_inside_the_revision_timeout(rendered):
    spec = one(rendered["knative"], "Service", "serving.knative.dev")["spec"]["template"]["spec"]
    # Knative sets the pod's terminationGracePeriodSeconds to the revision's timeoutSeconds.
    assert spec["timeoutSeconds"] > drain_seconds(worker_container({"spec": spec}))


# --- scaling --------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ["keda", "always-on"])
def test_autoscaler_owns_the_replica_count(rendered, overlay):
    assert "replicas" not in one(rendered[overlay], "Deployment")["spec"]


def test_keda_scales_to_zero_and_wakes_on_held_requests(rendered):
    objects = rendered["keda"]
    values = values_of("keda")
    scaled, route = one(objects, "ScaledObject"), one(objects, "InterceptorRoute")
    deployment, service = one(objects, "Deployment"), worker_service(objects)
    assert scaled["spec"]["minReplicaCount"] == 0
    assert scaled["spec"]["maxReplicaCount"] >= 1
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    triggers = {t["type"]: t for t in scaled["spec"]["triggers"]}
    # Only the interceptor sees requests while no worker runs: without this trigger nothing
    # would ever scale the Deployment up from zero.
    assert triggers["external-push"]["metadata"]["interceptorRoute"] == route["metadata"]["name"]
    assert triggers["external-push"]["metadata"]["scalerAddress"]
    load = triggers["prometheus"]["metadata"]
    assert "ember_requests_in_flight" in load["query"] and "ember_queue_depth" in load["query"]
    namespaces = set(re.findall(r'namespace="([^"]+)"', load["query"]))
    assert namespaces == {deployment["metadata"]["namespace"]}, "the query must read this namespace's workers"
    assert int(load["threshold"]) == route["spec"]["scalingMetric"]["concurrency"]["targetValue"]
    assert int(load["threshold"]) <= values["concurrency"]["maxBatch"]
    # The interceptor proxies to the worker Service's h2c port (InterceptorRoute CEL rules too).
    target = route["spec"]["target"]
    assert target["service"] == service["metadata"]["name"]
    assert ("port" in target) != ("portName" in target), "exactly one of port or portName"
    assert set(route["spec"]["scalingMetric"]) & {"concurrency", "requestRate"}
    port = next(p for p in service["spec"]["ports"] if p["name"] == target.get("portName") or p["port"] == target.get("port"))
    assert port["appProtocol"] == "kubernetes.io/h2c"
    paths = [p["value"] for rule in route["spec"]["rules"] for p in rule.get("paths", [])]
    assert paths == [f"/{HEALTH_SERVICE}/"], "route the inference API only; health checks must not wake workers"
    # Clients call the entry Service, an alias of the interceptor; its name is the routed host.
    [entry] = [s for s in find(objects, "Service", "") if s["spec"].get("type") == "ExternalName"]
    assert entry["spec"]["externalName"] == values["keda"]["interceptorService"]
    hosts = [h for rule in route["spec"]["rules"] for h in rule.get("hosts", [])]
    assert hosts and all(h.startswith(f"{entry['metadata']['name']}.{entry['metadata']['namespace']}.svc.") for h in hosts)
    assert all(p.get("appProtocol") == "kubernetes.io/h2c" for p in entry["spec"]["ports"])


def test_knative_scales_to_zero_on_concurrency(rendered):
    template = one(rendered["knative"], "Service", "serving.knative.dev")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    env = env_of(worker_container(template))
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert int(annotations["autoscaling.knative.dev/max-scale"]) >= 1
    assert annotations["autoscaling.knative.dev/metric"] == "concurrency"
    assert template["spec"]["containerConcurrency"] == int(env["EMBER_MAX_BATCH"])
    assert 0 < int(annotations["autoscaling.knative.dev/target"]) <= template["spec"]["containerConcurrency"]
    assert seconds(annotations["autoscaling.knative.dev/scale-down-delay"]) <= 3600  # Knative's maximum


def test_always_on_keeps_a_worker_and_scales_on_worker_load(rendered):
    objects = rendered["always-on"]
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] >= 1
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(objects, "Deployment")["metadata"]["name"]
    [metric] = hpa["spec"]["metrics"]
    rules = load_yaml(K8S / "overlays" / "always-on" / "prometheus-adapter-rules.yaml")["rules"]["custom"]
    exposed = {rule["name"]["as"]: rule for rule in rules}
    assert metric["pods"]["metric"]["name"] in exposed, "the HPA reads a metric the adapter rule does not expose"
    query = exposed[metric["pods"]["metric"]["name"]]["metricsQuery"]
    assert "ember_requests_in_flight" in query and "ember_queue_depth" in query


# --- secrets and images --------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_values_in_manifests(rendered, overlay):
    objects = rendered[overlay]
    assert not find(objects, "Secret"), "credentials come from a Secret the operator creates"
    for name, template in pod_templates(objects):
        for c in template["spec"]["containers"]:
            for e in c.get("env", []):
                if e["name"] in CREDENTIAL_ENV:
                    assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), f"{name}: {e['name']}"
            assert not any(arg.startswith("--aws") or "secret" in arg.lower() for arg in c.get("args", []))
    text = "\n".join(p.read_text() for p in (REPO / "deploy").rglob("*") if p.is_file() and p.suffix != ".json")
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), "an AWS access key id in deploy/"
    assert not re.search(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{40}", text)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_image_is_pinned(rendered, overlay):
    for name, template in pod_templates(rendered[overlay]):
        image = worker_container(template)["image"]
        assert "@sha256:" in image or (":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")), image


# --- optional node cache --------------------------------------------------------------------


def test_node_cache_component_adds_a_host_cache_and_nothing_else(tmp_path, rendered):
    shutil.copytree(K8S, tmp_path / "k8s")
    kustomization = tmp_path / "k8s" / "overlays" / "keda" / "kustomization.yaml"
    document = load_yaml(kustomization)
    document["components"].append("../../components/node-cache")
    kustomization.write_text(yaml.safe_dump(document))
    with_cache = kustomize(kustomization.parent)
    template = one(with_cache, "Deployment")["spec"]["template"]
    c = worker_container(template)
    cache_dir = env_of(c)["EMBER_CACHE_DIR"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == cache_dir)
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["hostPath"]["type"] == "Directory"
    labels = one(with_cache, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"  # hostPath needs it
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    for obj in with_cache:
        if not is_custom(obj):
            kubernetes_validate.validate(obj, MIN_KUBERNETES, strict=True)
    # Apart from the cache, the worker is unchanged (values still applied, restricted settings kept).
    base = worker_container(one(rendered["keda"], "Deployment")["spec"]["template"])
    c = copy.deepcopy(c)
    c["env"] = [e for e in c["env"] if e["name"] != "EMBER_CACHE_DIR"]
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["mountPath"] != cache_dir]
    assert c == base


# --- optional peer fetch --------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ["keda", "always-on"])
def test_peers_component_wires_the_headless_service_port_and_token(tmp_path, rendered, overlay):
    shutil.copytree(K8S, tmp_path / "k8s")
    kustomization = tmp_path / "k8s" / "overlays" / overlay / "kustomization.yaml"
    document = load_yaml(kustomization)
    document.setdefault("components", []).append("../../components/peers")
    kustomization.write_text(yaml.safe_dump(document))
    with_peers = kustomize(kustomization.parent)
    for obj in with_peers:
        if not is_custom(obj):
            kubernetes_validate.validate(obj, MIN_KUBERNETES, strict=True)
    template = one(with_peers, "Deployment")["spec"]["template"]
    c = worker_container(template)
    env = env_of(c)
    port = int(env["EMBER_PEER_PORT"])
    assert {"name": "peer", "containerPort": port} in c["ports"]
    peers = next(s for s in find(with_peers, "Service") if s["metadata"]["name"] == "ember-peers")
    assert peers["spec"]["clusterIP"] == "None" and not peers["spec"]["publishNotReadyAddresses"]
    for key, value in peers["spec"]["selector"].items():
        assert template["metadata"]["labels"].get(key) == value, "the headless Service selects no workers"
    assert peers["spec"]["ports"][0]["targetPort"] == "peer"
    # The worker asks that Service's name, on the port it serves, with a token from a Secret.
    assert env["EMBER_PEERS"] == f"dns:{peers['metadata']['name']}:{port}"
    token = next(e for e in c["env"] if e["name"] == "EMBER_PEER_TOKEN")
    assert "value" not in token and token["valueFrom"]["secretKeyRef"]["name"]
    # Apart from the peer wiring, the worker is unchanged.
    base = worker_container(one(rendered[overlay], "Deployment")["spec"]["template"])
    c = copy.deepcopy(c)
    c["env"] = [e for e in c["env"] if not e["name"].startswith("EMBER_PEER")]
    c["ports"] = [p for p in c["ports"] if p["name"] != "peer"]
    assert c == base
