"""Who may see a task: the ownership rule, pure.

A task belongs to the key that created it (its `owner`: a named key's name, or a fingerprint of
a plain key; None for a task made with no key configured, or before tasks had owners). A user
sees and cancels only its own tasks; an admin sees and cancels every task. With no key
configured every request is the one anonymous admin, so a server without keys behaves as it
always did. The HTTP layer decides who a request is (ris.api.keys); the engine applies this rule
to every lookup and list, so no route can forget it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """Who a request is: the owner its tasks get, and whether it may see everyone's."""

    owner: str | None
    admin: bool

    def sees(self, owner: str | None) -> bool:
        """Whether a task owned by `owner` exists for this principal."""
        return self.admin or owner == self.owner


# No key configured: one anonymous owner who is admin (everything visible, as before keys had
# owners). Also what internal readers use (the console's chart sampler).
ANONYMOUS = Principal(owner=None, admin=True)

# A request that reached a route without a key although keys are configured (none should: the
# guard lets only /health and the login form through): it owns and sees nothing.
NOBODY = Principal(owner="", admin=False)
