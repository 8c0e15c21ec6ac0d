"""The overlays' values.yaml files: every knob an operator sets lives there and only there,
and each lands on every field that uses it."""

import re
import shutil

import pytest
import yaml

from rendering import K8S, OVERLAYS, REPO, kustomize, load_yaml, pod_templates, values_of


def leaves(tree, path=()):
    """(dotted path, value) for every scalar and every map-valued leaf (nodeSelector) under tree."""
    for key, value in tree.items():
        if isinstance(value, dict) and key != "nodeSelector":
            yield from leaves(value, path + (key,))
        else:
            yield ".".join(path + (key,)), value


def field(obj, path: str):
    """A field by kustomize's path syntax: `a.b.[name=x].c`, `[key.with.dots]`, list indexes."""
    node = obj
    for token in re.findall(r"\[[^\]]*\]|[^.\[\]]+", path):
        if token.startswith("[") and "=" in token:
            key, _, wanted = token[1:-1].partition("=")
            node = next(item for item in node if item.get(key) == wanted)
        elif token.startswith("["):
            node = node[token[1:-1]]
        elif isinstance(node, list):
            node = node[int(token)]
        else:
            node = node[token]
    return node


# Where each value of an overlay's values.yaml must land: "Kind/name:field path". W is the object
# that runs the worker (the Deployment, or the Knative Service). Every value must be listed.
C = "spec.template.spec.containers.[name=worker]."
WORKER_TARGETS = {
    "image": [f"W:{C}image"],
    "model": [f"W:{C}env.[name=EMBER_MODEL].value"],
    "s3.region": [f"W:{C}env.[name=AWS_REGION].value"],
    "s3.endpoint": [f"W:{C}env.[name=AWS_ENDPOINT_URL].value"],
    "s3.credentialsSecret": [f"W:{C}env.[name={name}].valueFrom.secretKeyRef.name"
                             for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")],
    "gpu.count": [f"W:{C}resources.limits.[nvidia.com/gpu]"],
    "gpu.nodeSelector": ["W:spec.template.spec.nodeSelector"],
    "concurrency.maxBatch": [f"W:{C}env.[name=EMBER_MAX_BATCH].value"],
    "concurrency.maxQueue": [f"W:{C}env.[name=EMBER_MAX_QUEUE].value"],
    "kvMemoryFraction": [f"W:{C}env.[name=EMBER_KV_MEMORY_FRACTION].value"],
    "drain.timeoutSeconds": [f"W:{C}env.[name=EMBER_DRAIN_TIMEOUT_S].value"],
}
VALUE_TARGETS = {
    "keda": {
        **WORKER_TARGETS,
        "drain.terminationGracePeriodSeconds": ["W:spec.template.spec.terminationGracePeriodSeconds"],
        "concurrency.targetPerReplica": ["ScaledObject/ember-worker:spec.triggers.[name=worker-load].metadata.threshold",
                                         "InterceptorRoute/ember-worker:spec.scalingMetric.concurrency.targetValue"],
        "scale.minReplicas": ["ScaledObject/ember-worker:spec.minReplicaCount"],
        "scale.maxReplicas": ["ScaledObject/ember-worker:spec.maxReplicaCount"],
        "scale.idleSecondsBeforeScaleDown": [
            "ScaledObject/ember-worker:spec.cooldownPeriod",
            "ScaledObject/ember-worker:spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleDown.stabilizationWindowSeconds"],
        "keda.externalScalerAddress": ["ScaledObject/ember-worker:spec.triggers.[name=held-requests].metadata.scalerAddress"],
        "keda.interceptorService": ["Service/ember:spec.externalName"],
        "keda.host": ["InterceptorRoute/ember-worker:spec.rules.0.hosts.0"],
        "prometheus.serverAddress": ["ScaledObject/ember-worker:spec.triggers.[name=worker-load].metadata.serverAddress"],
        "prometheus.query": ["ScaledObject/ember-worker:spec.triggers.[name=worker-load].metadata.query"],
    },
    "knative": {
        **WORKER_TARGETS,
        "concurrency.maxBatch": WORKER_TARGETS["concurrency.maxBatch"] + ["W:spec.template.spec.containerConcurrency"],
        "concurrency.targetPerReplica": ["W:spec.template.metadata.annotations.[autoscaling.knative.dev/target]"],
        "scale.minReplicas": ["W:spec.template.metadata.annotations.[autoscaling.knative.dev/min-scale]"],
        "scale.maxReplicas": ["W:spec.template.metadata.annotations.[autoscaling.knative.dev/max-scale]"],
        "scale.scaleDownDelay": ["W:spec.template.metadata.annotations.[autoscaling.knative.dev/scale-down-delay]"],
    },
    "always-on": {
        **WORKER_TARGETS,
        "drain.terminationGracePeriodSeconds": ["W:spec.template.spec.terminationGracePeriodSeconds"],
        "concurrency.targetPerReplica": ["HorizontalPodAutoscaler/ember-worker:spec.metrics.0.pods.target.averageValue"],
        "scale.minReplicas": ["HorizontalPodAutoscaler/ember-worker:spec.minReplicas"],
        "scale.maxReplicas": ["HorizontalPodAutoscaler/ember-worker:spec.maxReplicas"],
        "scale.idleSecondsBeforeScaleDown": ["HorizontalPodAutoscaler/ember-worker:spec.behavior.scaleDown.stabilizationWindowSeconds"],
    },
}


def resolve(objects: list[dict], target: str):
    where, _, path = target.partition(":")
    if where == "W":
        [(_, template)] = pod_templates(objects)
        obj = next(o for o in objects if o.get("spec", {}).get("template") is template)
    else:
        kind, _, name = where.partition("/")
        obj = next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)
    return field(obj, path)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_value_lands_everywhere_it_is_used(tmp_path, overlay):
    """Set each knob of values.yaml to a distinct value, render, and find it at each of its
    targets. kustomize skips a replacement whose selector matches no object without an error,
    and a field left out of the replacements keeps its manifest value: both show up here."""
    shutil.copytree(K8S, tmp_path / "k8s")
    values_file = tmp_path / "k8s" / "overlays" / overlay / "values.yaml"
    document = load_yaml(values_file)
    knobs = dict(leaves(document["spec"]))
    assert set(knobs) == set(VALUE_TARGETS[overlay]), "every value in values.yaml needs its targets listed here"
    sentinels = {}
    for i, (knob, value) in enumerate(knobs.items()):
        if isinstance(value, dict):
            new = {f"sentinel.example/key-{i}": f"sentinel-{i}"}
        elif isinstance(value, int):
            new = 7000 + i
        elif isinstance(value, float):
            new = round(0.5 + i / 1000, 3)
        else:
            new = f"sentinel-{i}"
        node = document["spec"]
        *parents, last = knob.split(".")
        for key in parents:
            node = node[key]
        node[last] = new
        sentinels[knob] = new
    values_file.write_text(yaml.safe_dump(document))
    objects = kustomize(values_file.parent)
    for knob, new in sentinels.items():
        for target in VALUE_TARGETS[overlay][knob]:
            got = resolve(objects, target)
            assert (got == new if isinstance(new, dict) else str(got) == str(new)), f"{knob} did not reach {target}: {got!r}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_values_are_not_repeated_outside_values_yaml(overlay):
    """A knob's value written into another manifest would silently win or drift."""
    others = {p: p.read_text() for p in K8S.rglob("*.yaml") if p.name != "values.yaml"}
    for knob, value in leaves(values_of(overlay)):
        if isinstance(value, str) and len(value) >= 4:
            for other, text in others.items():
                assert value not in text, f"{knob} ({value!r}) repeated in {other.relative_to(REPO)}"
