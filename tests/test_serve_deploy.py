"""deploy/kubernetes/: every document validated against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict: unknown fields are errors) for the oldest and newest versions it is written for, and checked against
what `serve` does: the container's arguments parse with serve's own parser, the probes hit the health
routes on the container's port, the Service and HPA point at the Deployment, the HPA's metric is the name
prometheus-adapter's rule gives to a counter the server exports, and the rule's route filter keeps the
inference routes and drops the probes and /metrics. `kubectl --dry-run=client` is not used: it needs an API
server to map the kinds, and none is reachable here.
"""

import re
from pathlib import Path

import pytest
import yaml

from test_serve import FakePredictor, Metrics

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
VERSIONS = ("1.30.0", "1.37.0")  # the preStop sleep action is on by default from 1.30


def documents() -> dict[str, dict]:
    docs = [doc for path in sorted(DEPLOY.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return {doc["kind"]: doc for doc in docs}


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(version):
    import kubernetes_validate

    docs = documents()
    assert {kind: doc["apiVersion"] for kind, doc in docs.items()} == {
        "Deployment": "apps/v1", "Service": "v1", "HorizontalPodAutoscaler": "autoscaling/v2", "ConfigMap": "v1"}
    for doc in docs.values():
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_deployment_runs_serve_the_way_the_probes_and_hpa_expect():
    from jaxft.serve.app import _parser

    docs = documents()
    deployment, service, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python", "-m", "jaxft.main"] and container["args"][0] == "serve"
    args = _parser().parse_args(container["args"][1:])
    assert args.host == "0.0.0.0" and args.api_keys and args.public_metrics
    (port,) = container["ports"]
    assert port["containerPort"] == args.port == int(pod["metadata"]["annotations"]["prometheus.io/port"])
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port["name"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert args.api_keys.startswith(mounts["api-keys"] + "/")
    # SIGTERM waits out the preStop sleep, then the drain; the kubelet kills only after both
    assert pod["spec"]["terminationGracePeriodSeconds"] > container["lifecycle"]["preStop"]["sleep"]["seconds"] + \
        args.graceful_timeout_s
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels == service["spec"]["selector"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def adapter_rule() -> dict:
    (rule,) = yaml.safe_load(documents()["ConfigMap"]["data"]["config.yaml"])["rules"]
    return rule


def test_the_hpa_metric_comes_from_a_counter_the_server_exports():
    from jaxft.serve.app import ServeState, build_app
    from jaxft.serve.inputs import Limits

    rule = adapter_rule()
    hpa_metric = documents()["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
    assert re.fullmatch(rule["name"]["matches"], series)
    assert rule["name"]["as"] == hpa_metric

    state = ServeState(FakePredictor(), limits=Limits())
    app = build_app(state, warm_up=False)
    state.metrics.requests.labels("/predict", "200").inc()
    exported = Metrics(state.metrics.render().decode())
    assert any(s.name == series and s.labels == {"route": "/predict", "status": "200"} for s in exported.samples)

    # PromQL label regexes are anchored, as re.fullmatch is
    route_filter = re.search(r'route=~"([^"]+)"', rule["metricsQuery"]).group(1)
    routes = {route.path for route in app.routes}
    inference = {"/", "/predict", "/redact", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"}
    assert inference <= routes
    assert {path for path in routes if re.fullmatch(route_filter, path)} == inference
