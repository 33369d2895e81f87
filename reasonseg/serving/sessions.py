"""Chat sessions kept by the server: bounded in number, dropped after an idle time.

Each session holds a :class:`~reasonseg.inference.segmenter.ChatSession` (the image's encodings and the
conversation's KV cache), so sessions cost memory: ``max_sessions`` bounds the total. When the store is full, a
new session evicts the least recently used *idle* session; only when every session is in the middle of a request
is the new one refused (:class:`TooManySessions`, HTTP 429). A session unused for ``ttl`` seconds expires; its id
then answers like an unknown one (HTTP 404). Expiry is checked on every store operation, so no timer thread runs.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable


class SessionNotFound(KeyError):
    """No live session has this id (never created, deleted, expired or evicted)."""


class TooManySessions(Exception):
    """The store is full and every session is busy."""


@dataclass
class Session:
    id: str
    chat: Any  # a ChatSession
    created: float
    last_used: float
    busy: int = 0  # requests in flight on this session; a busy session neither expires nor is evicted
    turns: int = 0


class SessionStore:
    def __init__(self, max_sessions: int, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.max_sessions, self.ttl, self.clock = int(max_sessions), float(ttl), clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        with self._lock:
            self._purge(self.clock())
            return len(self._sessions)

    def _purge(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if not s.busy and now - s.last_used > self.ttl]:
            del self._sessions[key]
            self.expired += 1

    def has_room(self) -> bool:
        """Whether :meth:`add` would succeed now (a free slot, or an idle session to evict)."""
        with self._lock:
            self._purge(self.clock())
            return len(self._sessions) < self.max_sessions or any(not s.busy for s in self._sessions.values())

    def add(self, chat) -> Session:
        """Store a new session (evicting the least recently used idle one when full)."""
        with self._lock:
            now = self.clock()
            self._purge(now)
            if len(self._sessions) >= self.max_sessions:
                idle = next((k for k, s in self._sessions.items() if not s.busy), None)
                if idle is None:
                    raise TooManySessions(
                        f"all {self.max_sessions} sessions are answering right now; retry shortly"
                    )
                del self._sessions[idle]
                self.evicted += 1
            session = Session(id=secrets.token_urlsafe(16), chat=chat, created=now, last_used=now)
            self._sessions[session.id] = session
            return session

    def acquire(self, session_id: str) -> Session:
        """The live session with this id, marked busy (pair with :meth:`release`)."""
        with self._lock:
            now = self.clock()
            self._purge(now)
            session = self._sessions.get(session_id)
            if session is None:
                raise SessionNotFound(session_id)
            session.busy += 1
            session.last_used = now
            self._sessions.move_to_end(session_id)
            return session

    def release(self, session: Session) -> None:
        """End a request on the session; its idle time counts from now."""
        with self._lock:
            session.busy -= 1
            session.last_used = self.clock()

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._purge(self.clock())
            if self._sessions.pop(session_id, None) is None:
                raise SessionNotFound(session_id)

    def clear(self) -> None:
        with self._lock:
            self._sessions.clear()
