"""WIT glue of secret-scanner (world `quality-check` of agentrt:plugin@0.1.1).

componentize-py imports this module at build time and snapshots the interpreter; at run time
the component has no file system, so every module used later is imported here, at the top.
"""

import ast  # noqa: F401  (used by policy; in the snapshot)
import re  # noqa: F401

import policy
import wit_world
from wit_world.imports import checking, types

_SEVERITY = {
    "info": types.Severity.INFO,
    "warning": types.Severity.WARNING,
    "error": types.Severity.ERROR,
}


class WitWorld(wit_world.WitWorld):
    """The exports of the `quality-check` world."""

    def describe(self) -> checking.CheckInfo:
        # Secrets look the same in any language: no language filter.
        return checking.CheckInfo(name="secret-scanner", languages=[], rules=list(policy.RULES))

    def check(self, artifact: types.CodeArtifact) -> list:
        return [
            types.Finding(rule_id=p.rule_id, severity=_SEVERITY[p.severity], message=p.message,
                          line=p.line, column=p.column, suggestion=p.suggestion)
            for p in policy.find_problems(artifact.code, artifact.tests)
        ]
