"""Run the real Pulumi program (__main__.py) under Pulumi's mock runtime and record the graph.

MockResourceArgs carries no dependencies, so the mock monitor is wrapped to record each
RegisterResource request's dependencies, as Pulumi's own SDK tests do. Depending on a
ComponentResource is recorded as edges to its custom-resource children.
"""

from __future__ import annotations

import asyncio
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pytest
from google.protobuf import json_format
from pulumi.runtime.mocks import MockMonitor

ROOT = Path(__file__).resolve().parents[2]


class LabMocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        return f"{args.name}-id", dict(args.inputs)

    def call(
        self, args: pulumi.runtime.MockCallArgs
    ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        return {}, []


@dataclass
class Resource:
    name: str
    type: str
    parent: str
    deps: set[str]
    custom: bool
    inputs: dict[str, Any]
    secret_outputs: set[str]
    delete_before_replace: bool
    ignore_changes: set[str]


@dataclass
class Graph:
    resources: dict[str, Resource] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)

    def deps(self, name: str) -> set[str]:
        return self.resources[name].deps

    def input(self, name: str, key: str) -> Any:
        return self.resources[name].inputs.get(key)

    def named(self, type_: str) -> list[str]:
        return [r.name for r in self.resources.values() if r.type == type_]


SECRET_SIG = "4dabf18193072939515e22adb298388d"  # Pulumi's wire marker of a secret value


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and SECRET_SIG in value and "value" in value


class RecordingMonitor(MockMonitor):
    def __init__(self, mocks: pulumi.runtime.Mocks, graph: Graph):
        super().__init__(mocks)
        self.graph = graph

    def RegisterResource(self, request: Any) -> Any:
        self.graph.resources[request.name] = Resource(
            name=request.name,
            type=request.type,
            parent=request.parent.rsplit("::", 1)[-1],
            deps={urn.rsplit("::", 1)[-1] for urn in request.dependencies},
            custom=request.custom,
            inputs=json_format.MessageToDict(request.object),
            secret_outputs=set(request.additionalSecretOutputs),
            delete_before_replace=request.deleteBeforeReplace,
            ignore_changes=set(request.ignoreChanges),
        )
        return super().RegisterResource(request)


CONFIG = """\
state_dir: {state}
image: {{source: {image}}}
"""


@pytest.fixture
def run_program(tmp_path: Path):
    """run_program(extra_yaml, **stack_config) -> Graph of what the program registered."""

    def run(extra_yaml: str = "", **stack_config: str) -> Graph:
        # Pulumi's mocks use the thread's current loop, which an earlier asyncio.run() unsets.
        asyncio.set_event_loop(asyncio.new_event_loop())
        image = tmp_path / "image.qcow2"
        image.write_bytes(b"not a real image")
        cfg = tmp_path / "cluster.yaml"
        cfg.write_text(CONFIG.format(state=tmp_path / "state", image=image) + extra_yaml)
        graph = Graph()
        mocks = LabMocks()
        pulumi.runtime.set_mocks(
            mocks,
            project="k8s-libvirt-lab",
            stack="dev",
            preview=False,
            monitor=RecordingMonitor(mocks, graph),
        )
        config = {"lab:config": str(cfg)} | {f"lab:{k}": v for k, v in stack_config.items()}
        pulumi.runtime.set_all_config(config)

        @pulumi.runtime.test
        def program() -> pulumi.Output[Any]:
            ns = runpy.run_path(str(ROOT / "__main__.py"))
            k8s_lab = ns["k8s_lab"]
            outs = {"nodes": k8s_lab.nodes, "join_order": k8s_lab.join_order}
            if k8s_lab.kubeconfig is not None:
                outs["kubeconfig"] = k8s_lab.kubeconfig
            return pulumi.Output.from_input(outs).apply(graph.outputs.update)

        program()
        return graph

    return run
