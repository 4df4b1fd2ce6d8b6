"""Appion-side tables for workflows: jobs with conditions and states, and the memo of completed results.

A workflow row only names the workflow; each job row holds its whole definition (job type,
parameters, inputs, condition as safe JSON) and its current state, so a new process can reload
a workflow and continue.  The memo table maps a memo key (job type, input contents, parameters,
program versions, appion version, prerequisites' keys) to a completed job's result.
"""
from appion.base.db.fields import SinedonModel, boolean, integer, real, ref, text

__all__ = ["ApWorkflowData", "ApWorkflowJobData", "ApWorkflowMemoData"]


class ApWorkflowData(SinedonModel):
    """A named workflow (one row per name)."""

    name = text()

    class Meta(SinedonModel.Meta):
        db_table = "ApWorkflowData"


class ApWorkflowJobData(SinedonModel):
    """One job of a workflow, mutable: its state moves WAITING → RUNNING → COMPLETED / FAILED, or CANCELLED."""

    workflow = ref("ApWorkflowData", "workflow")
    label = text()              # unique within the workflow; conditions refer to jobs by label
    ordinal = integer()         # submission order (a job may only wait on jobs submitted before it)
    jobtype = text()
    params = text("params_json")
    inputs = text("inputs_json")
    condition = text("condition_json")  # JSON form of the condition, NULL = no condition
    state = text()
    memo_key = text()
    memo_hit = boolean()        # True when the result came from the memo instead of running
    result = text("result_json")
    reason = text()             # why it failed or was cancelled
    owner = text()              # host:pid:token of the run() that claimed it (to reclaim after a crash)
    attempts = integer()        # how many times it was actually executed
    elapsed_s = real()

    class Meta(SinedonModel.Meta):
        db_table = "ApWorkflowJobData"


class ApWorkflowMemoData(SinedonModel):
    """A completed result, found again by its memo key."""

    memo_key = text()
    jobtype = text()
    result = text("result_json")
    job = ref("ApWorkflowJobData", "job")

    class Meta(SinedonModel.Meta):
        db_table = "ApWorkflowMemoData"
