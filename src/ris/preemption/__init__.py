"""Sharing hardware between real-time and batch lanes: who yields to whom, when and how.

    policy.py   the pure policy: Activity, PreemptionPolicy and the Yielder (clock injected)
    board.py    the shared-memory board where real-time workers publish their activity

Which lanes a batch lane yields to, and with which policy, is read from the config
(ris/config/sharing.py); this package imports nothing from ris outside itself.

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
