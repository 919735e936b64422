"""The official Python `kubernetes` client against a real `skiff server`.

Run by scripts/test after `cargo test` has built target/debug/skiff (or the
binary named by SKIFF_BIN).
"""

import os
import subprocess
import tempfile
import threading

import pytest
from kubernetes import client, config, watch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SKIFF = os.environ.get("SKIFF_BIN", os.path.join(ROOT, "target", "debug", "skiff"))


@pytest.fixture(scope="module")
def api():
    data = tempfile.TemporaryDirectory()
    proc = subprocess.Popen(
        [SKIFF, "server", "--api-port", "0", "--data-dir", data.name],
        stdout=subprocess.PIPE,
        env={**os.environ, "RUST_LOG": "warn"},
        text=True,
    )
    try:
        ready = {}

        def read():
            for line in proc.stdout:
                if "https://127.0.0.1:" in line:
                    ready["line"] = line
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(60)
        assert "line" in ready, "skiff server printed no ready line"
        config.load_kube_config(config_file=os.path.join(data.name, "kubeconfig"))
        yield client.ApiClient()
    finally:
        proc.kill()  # by pid
        proc.wait()
        data.cleanup()


def test_version_and_discovery(api):
    version = client.VersionApi(api).get_code()
    assert version.git_version.startswith("v1.32.")
    groups = [g.name for g in client.ApisApi(api).get_api_versions().groups]
    assert "apps" in groups and "batch" in groups


def test_create_list_patch_delete(api):
    core = client.CoreV1Api(api)
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py", labels={"from": "python"}), data={"a": "1"})
    created = core.create_namespaced_config_map("default", body)
    assert created.metadata.uid
    listed = core.list_namespaced_config_map("default", label_selector="from=python")
    assert [cm.metadata.name for cm in listed.items] == ["py"]
    patched = core.patch_namespaced_config_map("py", "default", {"data": {"b": "2"}})
    assert patched.data == {"a": "1", "b": "2"}
    core.delete_namespaced_config_map("py", "default")
    with pytest.raises(client.exceptions.ApiException) as err:
        core.read_namespaced_config_map("py", "default")
    assert err.value.status == 404


def test_typed_deployment_is_defaulted(api):
    apps = client.AppsV1Api(api)
    labels = {"app": "pyweb"}
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="pyweb"),
        spec=client.V1DeploymentSpec(
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="app", image="hello:v1")]),
            ),
        ),
    )
    created = apps.create_namespaced_deployment("default", deployment)
    assert created.spec.replicas == 1
    assert created.spec.strategy.type == "RollingUpdate"
    assert created.spec.template.spec.restart_policy == "Always"


def test_watch_streams_events(api):
    core = client.CoreV1Api(api)
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="watched")))
    seen = []
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=10):
        seen.append((event["type"], event["object"].metadata.name))
        if ("ADDED", "watched") in seen:
            w.stop()
    assert ("ADDED", "watched") in seen
