"""WIT glue of the `python-quality` plugin (world `quality-check` of `agentrt:plugin@0.1.1`).

componentize-py generates the `wit_world` bindings at build time (see build.sh) and
pre-initialises the interpreter with this module imported, so every module used at call time
must be imported here, at the top: the component runs with a WASI context that grants nothing,
so nothing can be imported from a file system later. The analysis itself lives in `checks.py`.
"""

import ast  # noqa: F401  (imported at build time so it is in the snapshot)
import re  # noqa: F401
import traceback
import warnings  # noqa: F401

import checks
import wit_world
from wit_world.imports import checking, log, types
from wit_world.types import Err

_SEVERITIES = {
    checks.INFO: types.Severity.INFO,
    checks.WARNING: types.Severity.WARNING,
    checks.ERROR: types.Severity.ERROR,
}


class WitWorld(wit_world.WitWorld):
    """The exported functions of the `quality-check` world."""

    def describe(self) -> checking.CheckInfo:
        """Name, languages and rule ids of this check."""
        return checking.CheckInfo(name="python-quality", languages=["python"], rules=list(checks.RULES))

    def check(self, artifact: types.CodeArtifact) -> list:
        """Findings for the artifact; raises `Err(PipelineError)` only on an internal failure."""
        try:
            issues = checks.check_artifact(artifact.language, artifact.code, artifact.tests)
        except Exception as err:  # an analysis bug must be a clear error, not a trap
            detail = "".join(traceback.format_exception_only(type(err), err)).strip()
            try:
                log.write(log.Level.ERROR, "python-quality failed", [("error", detail)])
            except Exception:
                pass
            raise Err(
                types.PipelineError(
                    code="REV_003",
                    message="python-quality check failed: " + detail,
                    stage=types.Stage.CHECK,
                    attempt=1,
                )
            )
        return [
            types.Finding(
                rule_id=issue.rule_id,
                severity=_SEVERITIES[issue.severity],
                message=issue.message,
                line=min(issue.line, 0xFFFFFFFF),
                column=min(issue.column, 0xFFFFFFFF),
                suggestion=issue.suggestion,
            )
            for issue in issues
        ]
