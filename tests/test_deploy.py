"""
Tests for the container files in C{contrib/docker/} and the manifests in
C{contrib/kubernetes/} (docs/deploy.rst): every manifest is valid for the
Kubernetes API by its kind's schema, and the node options in the Dockerfile,
its entry point and the StatefulSet are ones C{twistd p2pexec} accepts, so
that neither can drift from L{p2pexec.tap.Options}.

No container runtime is needed: the schemas ship with the
C{kubernetes-validate} package, offline.
"""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
import json
import math
import os
import re
import shlex
from types import ModuleType
from typing import Any

import kubernetes_validate
import yaml
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from p2pexec.tap import Options, config_from_options

CONTRIB = FilePath(__file__).parent().parent().child("contrib")
DOCKER = CONTRIB.child("docker")
KUBERNETES = CONTRIB.child("kubernetes")

POD_FIELDS = {"metadata.name": "p2pexec-0", "metadata.namespace": "default", "status.podIP": "10.244.1.7"}
"""Sample values of the downward API's fields, as Kubernetes would fill them in."""

_SUFFIXES = {"m": 0.001, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(text: str) -> float:
    """A Kubernetes quantity (C{2}, C{500m}, C{2Gi}) as a number."""
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    assert match is not None, f"not a quantity: {text!r}"
    number, suffix = match.groups()
    return float(number) * (_SUFFIXES[suffix] if suffix else 1)


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """Every YAML document under C{contrib/kubernetes}, with the name of its file."""
    found = []
    for path in sorted(KUBERNETES.globChildren("*.yaml")) + sorted(KUBERNETES.globChildren("*.yml")):
        for document in yaml.safe_load_all(path.getContent().decode("utf-8")):
            if document is not None:
                found.append((path.basename(), document))
    return found


def manifest(kind: str) -> dict[str, Any]:
    """The one manifest of C{kind}."""
    [document] = [document for _, document in manifests() if document["kind"] == kind]
    return document


def node_container(statefulset: dict[str, Any]) -> dict[str, Any]:
    """The StatefulSet's container named C{node}."""
    [container] = [c for c in statefulset["spec"]["template"]["spec"]["containers"] if c["name"] == "node"]
    return container


def container_environment(container: dict[str, Any]) -> dict[str, str]:
    """
    The values Kubernetes gives C{container}'s environment variables: plain
    values, downward API fields (L{POD_FIELDS}) and its own resource limits
    divided by their divisor and rounded up, as the kubelet does.
    """
    environment = {}
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = variable["value"]
            continue
        source = variable["valueFrom"]
        if "fieldRef" in source:
            environment[variable["name"]] = POD_FIELDS[source["fieldRef"]["fieldPath"]]
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            assert ref.get("containerName", container["name"]) == container["name"], ref
            bound, _, resource = ref["resource"].partition(".")
            amount = quantity(container["resources"][bound][resource])
            environment[variable["name"]] = str(math.ceil(amount / quantity(ref.get("divisor", "1"))))
        else:
            raise AssertionError(f"unexpected env source {source}")
    return environment


def expand(arg: str, environment: dict[str, str]) -> str:
    """C{arg} with each C{$(VAR)} replaced as Kubernetes does; an unknown variable fails the test."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in environment, f"$({name}) in {arg!r} is not in the container's env"
        return environment[name]

    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, arg)


def option_value(argv: list[str], name: str) -> str | None:
    """The last value of long option C{name} in C{argv} (C{--name V} or C{--name=V})."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1 :]
    return value


def replace_option(argv: list[str], name: str, new: str) -> list[str]:
    """C{argv} with every value of long option C{name} replaced by C{new}."""
    result = []
    for i, arg in enumerate(argv):
        if arg.startswith(name + "="):
            result.append(f"{name}={new}")
        elif i > 0 and argv[i - 1] == name:
            result.append(new)
        else:
            result.append(arg)
    return result


class _ParsesNodeOptions(SynchronousTestCase):
    """Parses node options with a real key file and state folder in place of the container's paths."""

    def parse(self, argv: list[str], key_path: str, state_dir: str) -> Options:
        """
        Parse C{argv} with L{Options}, after checking that it names
        C{key_path} and C{state_dir} and pointing those at a real key
        (mode 0600) and a temporary folder.
        """
        self.assertEqual(option_value(argv, "--key-file"), key_path)
        self.assertEqual(option_value(argv, "--state-dir"), state_dir)
        key_file = self.mktemp()
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"ab" * 32 + b"\n")
        os.close(fd)
        argv = replace_option(replace_option(argv, "--key-file", key_file), "--state-dir", self.mktemp())
        options = Options()
        options.parseOptions(argv)
        return options


class ManifestSchemaTests(SynchronousTestCase):
    """Every manifest validates against the Kubernetes schema of its kind and apiVersion."""

    def test_the_manifests_are_there(self) -> None:
        """contrib/kubernetes holds the StatefulSet, its headless Service and a PodDisruptionBudget."""
        kinds = sorted(document["kind"] for _, document in manifests())
        self.assertEqual(kinds, ["PodDisruptionBudget", "Service", "StatefulSet"])

    def test_valid(self) -> None:
        """
        Each document is valid in the newest Kubernetes version the package
        knows, in strict mode: no field the API does not have.
        """
        version = kubernetes_validate.latest_version()
        for filename, document in manifests():
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                self.fail(f"{filename}: {document['kind']} {document['metadata']['name']}: {e.message}")

    def test_misspelt_field_refused(self) -> None:
        """A misspelt field and a wrongly typed value are refused, so L{test_valid} can fail."""
        version = kubernetes_validate.latest_version()
        statefulset = copy.deepcopy(manifest("StatefulSet"))
        node_container(statefulset)["readinessProbe"]["httpGet"]["paht"] = "/healthz"
        self.assertRaises(kubernetes_validate.ValidationError, kubernetes_validate.validate, statefulset, version, True)
        statefulset = copy.deepcopy(manifest("StatefulSet"))
        statefulset["spec"]["replicas"] = "three"
        self.assertRaises(kubernetes_validate.ValidationError, kubernetes_validate.validate, statefulset, version, True)


class StatefulSetTests(_ParsesNodeOptions):
    """The StatefulSet's node options parse, and agree with the rest of the manifests."""

    def setUp(self) -> None:
        self.statefulset = manifest("StatefulSet")
        self.service = manifest("Service")
        self.pod = self.statefulset["spec"]["template"]["spec"]
        self.container = node_container(self.statefulset)
        environment = container_environment(self.container)
        self.argv = [expand(arg, environment) for arg in self.container["args"]]

    def mount(self, volume: str) -> str:
        """Where the node container mounts C{volume}."""
        [path] = [m["mountPath"] for m in self.container["volumeMounts"] if m["name"] == volume]
        return str(path)

    def test_args_parse(self) -> None:
        """
        The container's args, with Kubernetes' $(VAR) filled in, are accepted
        by the plugin: a node named after its pod on the pod's address, seeded
        by the headless Service's name, multicast off, CPUs and memory from
        the container's limits; the args win over the entry point's defaults.
        """
        # Behind the image's entry point, whose own --name and --interface the args override.
        command = entrypoint_command(self.argv, "some-host", "192.0.2.1")
        plugin = command.index("p2pexec")
        options = self.parse(command[plugin + 1 :], self.mount("cluster-key") + "/cluster.key", self.mount("state"))
        config = config_from_options(options)
        self.assertEqual((config.name, config.interface), (POD_FIELDS["metadata.name"], POD_FIELDS["status.podIP"]))
        self.assertFalse(config.multicast)
        self.assertIsNotNone(config.key)
        limits = self.container["resources"]["limits"]
        self.assertEqual(config.slots, math.ceil(quantity(limits["cpu"])))
        self.assertEqual(options["node_resources"].cpus, math.ceil(quantity(limits["cpu"])))
        self.assertEqual(options["node_resources"].memory, quantity(limits["memory"]))

    def test_bad_arg_refused(self) -> None:
        """A misspelt option in the args is refused by the parser, so L{test_args_parse} can fail."""
        from twisted.python import usage

        argv = [arg.replace("--no-multicast", "--no-multicats") for arg in self.argv]
        self.assertRaises(
            usage.UsageError, self.parse, argv, self.mount("cluster-key") + "/cluster.key", self.mount("state")
        )

    def test_peer_is_the_headless_service(self) -> None:
        """--peer names the StatefulSet's headless Service, at the port the nodes listen on."""
        self.assertEqual(self.service["spec"]["clusterIP"], "None")
        self.assertEqual(self.statefulset["spec"]["serviceName"], self.service["metadata"]["name"])
        peers = [arg.partition("=")[2] for arg in self.argv if arg.startswith("--peer=")]
        port = int(option_value(self.argv, "--port") or 0)
        self.assertEqual(peers, [f"{self.service['metadata']['name']}:{port}"])
        [amp] = [p for p in self.service["spec"]["ports"] if p["name"] == "amp"]
        self.assertEqual(amp["port"], port)
        self.assertEqual(self.service["spec"]["selector"], self.statefulset["spec"]["template"]["metadata"]["labels"])

    def test_readiness_on_healthz(self) -> None:
        """The readiness probe asks /healthz on the container port that is the node's --web."""
        probe = self.container["readinessProbe"]["httpGet"]
        self.assertEqual(probe["path"], "/healthz")
        [port] = [p["containerPort"] for p in self.container["ports"] if p["name"] == probe["port"]]
        self.assertEqual(port, int(option_value(self.argv, "--web") or 0))

    def test_key_from_secret(self) -> None:
        """The key file the node reads is copied by the init container from the Secret's volume."""
        volumes = {v["name"]: v for v in self.pod["volumes"]}
        self.assertEqual(volumes["cluster-key-secret"]["secret"]["secretName"], "p2pexec-cluster-key")
        self.assertEqual(volumes["cluster-key"]["emptyDir"]["medium"], "Memory")
        [init] = self.pod["initContainers"]
        mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
        self.assertEqual(
            init["command"],
            [
                "install",
                "-m",
                "0400",
                mounts["cluster-key-secret"] + "/cluster.key",
                option_value(self.argv, "--key-file"),
            ],
        )
        self.assertEqual(mounts["cluster-key"], self.mount("cluster-key"))

    def test_state_on_a_claim(self) -> None:
        """--state-dir is the mount of the per-pod volume claim, and the pods run as a user other than root."""
        [claim] = self.statefulset["spec"]["volumeClaimTemplates"]
        self.assertEqual(self.mount(claim["metadata"]["name"]), option_value(self.argv, "--state-dir"))
        self.assertTrue(self.pod["securityContext"]["runAsNonRoot"])
        self.assertNotEqual(self.pod["securityContext"]["runAsUser"], 0)

    def test_disruption_budget(self) -> None:
        """The PodDisruptionBudget selects the StatefulSet's pods and lets one go at a time."""
        budget = manifest("PodDisruptionBudget")
        self.assertEqual(budget["spec"]["selector"], self.statefulset["spec"]["selector"])
        self.assertEqual(budget["spec"]["maxUnavailable"], 1)


def dockerfile_instructions() -> dict[str, list[str]]:
    """The Dockerfile's instructions (continuation lines joined), each keyword's arguments in order."""
    instructions: dict[str, list[str]] = {}
    logical = ""
    for line in DOCKER.child("Dockerfile").getContent().decode("utf-8").splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith("#")):
            continue
        logical += line.rstrip("\\").strip() + " "
        if line.endswith("\\"):
            continue
        keyword, _, rest = logical.strip().partition(" ")
        instructions.setdefault(keyword.upper(), []).append(rest.strip())
        logical = ""
    return instructions


def entrypoint_command(arguments: list[str], name: str, address: str) -> list[str]:
    """
    The command C{contrib/docker/p2pexec-container} execs with C{arguments}
    (the image's CMD or docker run's), its host name C{name} at C{address}.
    """
    text = DOCKER.child("p2pexec-container").getContent().decode("utf-8")
    match = re.search(r"^exec (.*?[^\\])$", text.replace("\\\n", " "), re.MULTILINE)
    assert match is not None, "no exec line in p2pexec-container"
    words = shlex.split(match.group(1))
    assert words[-1] == "$@", words
    mapping = {"$name": name, "$address": address}
    return [mapping.get(word, word) for word in words[:-1]] + arguments


def load_healthcheck() -> ModuleType:
    """C{contrib/docker/p2pexec-healthcheck} as a module."""
    path = DOCKER.child("p2pexec-healthcheck").path
    loader = importlib.machinery.SourceFileLoader("p2pexec_healthcheck", path)
    spec = importlib.util.spec_from_loader("p2pexec_healthcheck", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


class DockerfileTests(_ParsesNodeOptions):
    """The image runs twistd as PID 1 with options the plugin accepts."""

    def setUp(self) -> None:
        self.instructions = dockerfile_instructions()

    def exec_form(self, keyword: str) -> list[str]:
        """The one C{keyword} instruction's JSON (exec form) list; shell form fails the test."""
        [text] = self.instructions[keyword]
        value = json.loads(text)
        self.assertIsInstance(value, list, f"{keyword} is not in exec form")
        return list(value)

    def test_entrypoint_and_cmd_parse(self) -> None:
        """
        The entry point, in exec form, execs twistd in the foreground without a
        pid file, and the options it passes with the image's CMD parse.
        """
        self.assertEqual(self.exec_form("ENTRYPOINT"), ["p2pexec-container"])
        command = entrypoint_command(self.exec_form("CMD"), "a1", "172.18.0.2")
        self.assertEqual(command[0], "twistd")
        plugin = command.index("p2pexec")
        self.assertIn("--nodaemon", command[:plugin])
        self.assertIn("--pidfile=", command[:plugin])
        [volume] = self.instructions["VOLUME"]
        options = self.parse(command[plugin + 1 :], "/run/secrets/cluster.key", json.loads(volume)[0])
        self.assertEqual((options["name"], options["interface"], options["web"]), ("a1", "172.18.0.2", 8080))

    def test_bad_cmd_refused(self) -> None:
        """An option the plugin does not know is refused, so L{test_entrypoint_and_cmd_parse} can fail."""
        from twisted.python import usage

        command = entrypoint_command(self.exec_form("CMD") + ["--web-port", "80"], "a1", "172.18.0.2")
        plugin = command.index("p2pexec")
        self.assertRaises(
            usage.UsageError, self.parse, command[plugin + 1 :], "/run/secrets/cluster.key", "/var/lib/p2pexec"
        )

    def test_small_unprivileged_image(self) -> None:
        """A slim Python base, pip without its cache, a user other than root, state in a volume."""
        [base] = self.instructions["FROM"]
        self.assertRegex(base, r"^python:[0-9.]+-slim")
        self.assertTrue(any("pip install --no-cache-dir" in run for run in self.instructions["RUN"]))
        [user] = self.instructions["USER"]
        self.assertNotIn(user.partition(":")[0], ("root", "0"))
        self.assertEqual(json.loads(self.instructions["VOLUME"][0]), ["/var/lib/p2pexec"])

    def test_healthcheck(self) -> None:
        """The HEALTHCHECK runs p2pexec-healthcheck, in exec form."""
        [check] = self.instructions["HEALTHCHECK"]
        self.assertIn(' CMD ["p2pexec-healthcheck"]', " " + check)


class HealthcheckTests(SynchronousTestCase):
    """C{p2pexec-healthcheck} finds the node's /healthz in its command line."""

    def setUp(self) -> None:
        self.module = load_healthcheck()

    def test_url_from_the_image_command(self) -> None:
        """The image's own command line gives /healthz on the container's address and --web port."""
        cmd = json.loads(dockerfile_instructions()["CMD"][0])
        argv = ["/usr/local/bin/python3"] + entrypoint_command(cmd, "a1", "172.18.0.2")
        self.assertEqual(self.module.health_url(argv), "http://172.18.0.2:8080/healthz")

    def test_forms_and_last_wins(self) -> None:
        """C{--web=N} and C{--web N} both count, the last one wins, and options before the plugin are not its own."""
        argv = ["twistd", "-n", "p2pexec", "--interface", "10.0.0.1", "--web=9000", "--interface=10.0.0.2"]
        self.assertEqual(self.module.health_url(argv), "http://10.0.0.2:9000/healthz")
        self.assertEqual(self.module.health_url(argv + ["--web", "9001"]), "http://10.0.0.2:9001/healthz")

    def test_no_web(self) -> None:
        """Without --web, or with --web 0, there is nothing to check."""
        self.assertIsNone(self.module.health_url(["twistd", "-n", "p2pexec", "--name", "a1"]))
        self.assertIsNone(self.module.health_url(["twistd", "-n", "p2pexec", "--web", "0"]))
        self.assertIsNone(self.module.health_url(["python3", "-c", "pass"]))
