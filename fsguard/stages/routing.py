"""Routing: where the call goes once it may pass.

Until the routing table lands, every call goes to ``routing.default_target``.
"""

from __future__ import annotations

from fsguard.call import Call
from fsguard.pipeline import Stage, Verdict


class RoutingStage(Stage):
    name = "routing"

    def run(self, call: Call) -> Verdict:
        target = self.settings.routing.default_target
        return Verdict.route(target, f"default target {target}", "default")
