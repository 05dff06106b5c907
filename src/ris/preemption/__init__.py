"""Sharing hardware between real-time and batch lanes: who yields to whom, when and how.

    policy.py   the pure policy: Activity, PreemptionPolicy and the Yielder (clock injected)
    board.py    the shared-memory board where real-time workers publish their activity
    resolve.py  from config: which lanes a batch lane yields to, and with which policy
                (not imported here: this package stays free of the config's dependencies)

The whole path of one yield: the LLM lane's runner (ris/lanes/llm.py) publishes PREFILL ->
board.py -> the image worker's Yielder, called at the image backend's preemption points
(ris/lanes/image.py, ris/backends/image_diffusers.py) -> pauses while the policy protects it.
"""

from ris.preemption.board import ActivityBoard
from ris.preemption.policy import Activity, PreemptedCancel, PreemptionPolicy, Yielder, YieldStats

__all__ = [
    "Activity",
    "ActivityBoard",
    "PreemptedCancel",
    "PreemptionPolicy",
    "YieldStats",
    "Yielder",
]
