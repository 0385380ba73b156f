"""Validates the manifests under deploy/ (run by tests/serve/deploy.rs; needs kubernetes-validate).

Core kinds (Deployment, Service) are checked strictly against Kubernetes 1.37's own schemas
(kubernetes-validate). KServe's kinds have no schema there: their containers are core/v1
Containers, checked strictly inside a Pod; their own fields are checked against the names KServe's
v1alpha1 ServingRuntimeSpec and v1beta1 ModelSpec define; and the cross-references are checked:
the InferenceService names a runtime and model format that exist, probes read the v2 health
routes on a declared port, the Service selects the Deployment's pods on a declared port.

usage: python3 deploy/validate.py [DEPLOY_DIR]   (prints one line per manifest; exit 1 on a fault)
"""
import glob
import os
import sys

import kubernetes_validate
import yaml

K8S = "1.37.0"
RUNTIME_SPEC = {
    "supportedModelFormats", "multiModel", "disabled", "protocolVersions", "containers", "volumes",
    "nodeSelector", "affinity", "tolerations", "labels", "annotations", "imagePullSecrets", "hostIPC",
    "dnsPolicy", "hostNetwork", "grpcEndpoint", "grpcDataEndpoint", "httpDataEndpoint", "replicas",
    "storageHelper", "builtInAdapter", "workerSpec",
}
MODEL_FORMAT = {"name", "version", "autoSelect", "priority"}
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
MODEL_SPEC = {"modelFormat", "runtime", "storageUri", "runtimeVersion", "protocolVersion", "args", "env",
              "resources", "name", "image", "ports", "livenessProbe", "readinessProbe", "storage"}

faults = []


def fault(where, msg):
    faults.append(f"{where}: {msg}")


def check_pod_containers(where, containers):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": {"containers": containers}}
    try:
        kubernetes_validate.validate(pod, K8S, strict=True)
    except kubernetes_validate.ValidationError as e:
        fault(where, f"container: {e.message}")


def check_probes(where, c):
    ports = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
    for probe, path in [("livenessProbe", "/v2/health/live"), ("readinessProbe", "/v2/health/ready")]:
        get = c.get(probe, {}).get("httpGet")
        if not get:
            fault(where, f"{c['name']}: no {probe} httpGet")
            continue
        if get.get("path") != path:
            fault(where, f"{c['name']}: {probe} reads {get.get('path')}, not {path}")
        if get.get("port") not in ports:
            fault(where, f"{c['name']}: {probe} port {get.get('port')} is not a declared port")
    args = c.get("args", [])
    if "--port" in args and int(args[args.index("--port") + 1]) not in ports:
        fault(where, f"{c['name']}: serves on --port {args[args.index('--port') + 1]}, not a declared port")


def main(root):
    docs = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True)):
        with open(path) as f:
            docs += [(os.path.relpath(path, root), d) for d in yaml.safe_load_all(f) if d]
    runtimes = {}
    for where, d in docs:
        kind = d.get("kind")
        if kind == "ClusterServingRuntime":
            if d.get("apiVersion") != "serving.kserve.io/v1alpha1":
                fault(where, f"apiVersion {d.get('apiVersion')}")
            spec = d.get("spec", {})
            for k in set(spec) - RUNTIME_SPEC:
                fault(where, f"spec.{k} is not a ServingRuntimeSpec field")
            for f in spec.get("supportedModelFormats", []):
                for k in set(f) - MODEL_FORMAT:
                    fault(where, f"supportedModelFormats: {k} is not a field")
            for p in set(spec.get("protocolVersions", [])) - PROTOCOLS:
                fault(where, f"protocol {p} is not one of {sorted(PROTOCOLS)}")
            check_pod_containers(where, spec.get("containers", []))
            for c in spec.get("containers", []):
                check_probes(where, c)
            runtimes[d["metadata"]["name"]] = spec
        elif kind == "InferenceService":
            if d.get("apiVersion") != "serving.kserve.io/v1beta1":
                fault(where, f"apiVersion {d.get('apiVersion')}")
        else:
            try:
                kubernetes_validate.validate(d, K8S, strict=True)
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
                fault(where, getattr(e, "message", str(e)))
            if kind == "Deployment":
                for c in d["spec"]["template"]["spec"]["containers"]:
                    check_probes(where, c)
        print(f"checked {where}: {kind} {d.get('metadata', {}).get('name')}")
    for where, d in docs:
        if d.get("kind") == "InferenceService":
            model = d.get("spec", {}).get("predictor", {}).get("model", {})
            for k in set(model) - MODEL_SPEC:
                fault(where, f"predictor.model.{k} is not a ModelSpec field")
            rt = runtimes.get(model.get("runtime"))
            if rt is None:
                fault(where, f"runtime {model.get('runtime')} is not a ClusterServingRuntime here")
                continue
            formats = {f["name"] for f in rt.get("supportedModelFormats", [])}
            if model.get("modelFormat", {}).get("name") not in formats:
                fault(where, f"modelFormat {model.get('modelFormat')} is not among {sorted(formats)}")
            if model.get("protocolVersion", "v1") not in rt.get("protocolVersions", []):
                fault(where, f"protocolVersion {model.get('protocolVersion')} is not the runtime's")
        if d.get("kind") == "Service":
            sel = d["spec"]["selector"]
            pods = [
                x["spec"]["template"] for _, x in docs if x.get("kind") == "Deployment"
                and all(x["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())
            ]
            if not pods:
                fault(where, f"selector {sel} selects no Deployment's pods")
            ports = {p.get(k) for t in pods for c in t["spec"]["containers"] for p in c.get("ports", [])
                     for k in ("name", "containerPort")}
            for p in d["spec"]["ports"]:
                if p.get("targetPort", p["port"]) not in ports:
                    fault(where, f"targetPort {p.get('targetPort')} is not a port of the selected pods")
    for f in faults:
        print("FAULT", f)
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))))
