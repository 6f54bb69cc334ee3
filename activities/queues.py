"""The queues that know (README, "Queues: assignment, presence, capacity, skills"): who waits in what order, who is
present with how much free capacity and which skills, and the offers of push queues.

Everything lives in the event stream's store, beside the waiting lists it already keeps exactly: a conversation
joins and leaves its queue with its own bells (one row per conversation, the newest bell wins, so a join can be
neither lost nor doubled), and every decision here is one write transaction, so two processes (API replicas, workers)
deciding at once cannot both give an agent its last free place, nor offer one conversation twice.

- Presence: a live agent is `online`, `away` or `offline`; the console sets it and repeats it as a heartbeat, and an
  agent whose heartbeats stop is `offline` after the config's `presence_grace_seconds`.
- Load: the conversations an agent owns, the claims and accepts in flight, and the open offers. It never exceeds the
  agent's capacity: an offer and a claim both take a place first, inside the transaction that counts.
- Push (and sticky) queues: `assign` offers each waiting conversation, highest priority then oldest first, to an
  online agent of the queue with the skills and free capacity, the longest idle first (sticky: the agent who last had
  the conversation first, while online, within `sticky_minutes`). An offer stands `offer_seconds`; when it lapses the
  agent is set `away` (they are not at their desk) and the conversation goes to the next agent; a decline sends it
  on at once. Accepting is the claim.
- Changes of an agent's offers and presence are logged in the bell log as notes, so every API process's desk stream
  sends them (`event: offer`, `event: presence`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel

from activities.registry import LiveAgentInfo
from activities.stream import Db, StreamStore
from models.config import BatonConfig, Route

Status = Literal["online", "away", "offline"]
# A claim or accept in flight holds its place this long at most (the conversation's bell normally ends it at once).
CLAIM_HOLD = timedelta(seconds=60)
# An accept still in flight after this long (its API process died) no longer holds the offer.
ACCEPT_HOLD = timedelta(seconds=30)
# An assignment round reads what waits in a queue this many at a time, and at most SCAN_PAGES pages (10,000
# conversations) while someone in the queue has room.
SCAN = 500
SCAN_PAGES = 20
DEFAULT_CAPACITY = 3
# Present and able to take work: online, and the console's heartbeat within the grace (the cutoff).
_ONLINE = "status = 'online' AND heartbeat_at >= ?"
# Present: the console is there (its heartbeat within the grace) and the agent has not gone offline. An agent who is
# `away` (by choice, or because an offer lapsed) is offered nothing but still counts as present: conversations wait
# for them rather than go on to the next rung.
_PRESENT = "status != 'offline' AND heartbeat_at >= ?"
# A claim's or accept's place counts while it is fresh and the conversation still waits as it did when the place was
# taken: its next bell (owned, moved, cancelled) ends it, whatever order bells land in.
_HELD = ("r.at > ? AND EXISTS (SELECT 1 FROM conversations c2 WHERE c2.conversation_id = r.conversation_id"
         " AND c2.state = 'handoff_pending' AND c2.waiting_since IS NOT DISTINCT FROM r.waiting_since)")


def _holding(agents: str) -> str:
    """What counts in a load, one row per (agent, conversation): the conversations the agents (`agents`: "= ?" or
    "IN (?, ...)", asked three times) own, their claims and accepts in flight (then the cutoff), their open offers."""
    return (f"SELECT owner AS agent_id, conversation_id FROM conversations WHERE owner {agents} AND state = 'live_agent'"
            f" UNION SELECT r.agent_id, r.conversation_id FROM reservations r WHERE r.agent_id {agents} AND {_HELD}"
            f" UNION SELECT agent_id, conversation_id FROM offers WHERE agent_id {agents}"
            " AND status IN ('open', 'accepting')")


class Presence(BaseModel):
    agent_id: str
    name: str | None = None
    status: Status
    since: datetime
    capacity: int
    load: int
    skills: list[str] = []


class Offer(BaseModel):
    offer_id: str
    conversation_id: str
    queue: str
    agent_id: str
    offered_at: datetime
    expires_at: datetime
    status: str
    reason: str | None = None
    summary: str | None = None
    priority: int = 0
    # The wait it was offered for (the conversation's waiting_since then).
    waiting_since: datetime | None = None


class Refused(Exception):
    """A desk action the queues refuse: `status` is the HTTP status that says why (403 skills, 404 unknown offer,
    409 capacity, a lapsed offer, a conversation offered to someone else)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _iso(at: datetime) -> str:
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


def _now() -> datetime:
    return datetime.now(UTC)


def personal_queue(agent_id: str) -> str:
    return f"agent:{agent_id}"


# What a handoff's params may ask of a queue (`params.priority`, `params.skills`): the API refuses more (params_problem);
# needs() clamps what reaches it by other ways (a signal sent with the `temporal` CLI).
PRIORITY_MIN, PRIORITY_MAX = -100, 100
MAX_SKILLS, MAX_SKILL_LENGTH = 20, 128


def params_problem(params: dict) -> str | None:
    """What is wrong with a handoff's `priority` and `skills` params (the API's 422), or None."""
    given = params.get("priority")
    if given is not None and (isinstance(given, bool) or not isinstance(given, int)
                              or not PRIORITY_MIN <= given <= PRIORITY_MAX):
        return f"params.priority: must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX} (higher waits ahead)"
    asked = params.get("skills")
    if asked is not None:
        if not isinstance(asked, str):
            return "params.skills: must be a comma-separated string of skills, e.g. \"de,billing\""
        skills = [x.strip() for x in asked.split(",") if x.strip()]
        if len(skills) > MAX_SKILLS:
            return f"params.skills: at most {MAX_SKILLS} skills ({len(skills)} given)"
        if any(len(x) > MAX_SKILL_LENGTH for x in skills):
            return f"params.skills: a skill is at most {MAX_SKILL_LENGTH} characters"
    return None


def needs(route: Route | None, params: dict) -> tuple[int, list[str]]:
    """A handoff's priority and the skills it asks for: the handoff's `params.priority` (an int), else the route's;
    the route's and the handoff's `params.skills` (a comma-separated string: params are scalars). The skills of the
    queue it waits in are added where it waits (`Queues.required`): a fallback to another queue needs that queue's."""
    priority = route.priority if route is not None else 0
    given = params.get("priority")
    if isinstance(given, int) and not isinstance(given, bool):
        priority = max(PRIORITY_MIN, min(PRIORITY_MAX, given))
    skills: list[str] = []
    if route is not None:
        skills += route.skills
    asked = params.get("skills")
    if isinstance(asked, str):
        skills += [s.strip() for s in asked.split(",") if s.strip()]
    elif isinstance(asked, list):
        skills += [s for s in asked if isinstance(s, str) and s]
    return priority, list(dict.fromkeys(s[:MAX_SKILL_LENGTH] for s in skills))[:MAX_SKILLS]


class Queues:
    """The queues' decisions over the stream's store. Cheap to make: one per call is fine."""

    def __init__(self, store: StreamStore, config: BatonConfig | None = None) -> None:
        self.store = store
        # Reads need none; assignment and presence checks read the queues' and the grace's settings.
        self.config = config or BatonConfig()

    # ---- terms (written by the routing decision) ------------------------------------------------------------

    def set_terms(self, conversation_id: str, priority: int, skills: list[str]) -> None:
        if not priority and not skills:
            with self.store.reading() as db:
                if db.execute("SELECT 1 FROM terms WHERE conversation_id = ?", (conversation_id,)).fetchone() is None:
                    return  # the default, and nothing earlier to replace: no write (most handoffs)
        with self.store.writing() as db:
            db.execute(
                "INSERT INTO terms (conversation_id, priority, skills) VALUES (?, ?, ?) ON CONFLICT (conversation_id)"
                " DO UPDATE SET priority = excluded.priority, skills = excluded.skills",
                (conversation_id, priority, json.dumps(skills)),
            )

    def required(self, queue: str | None, skills: Iterable[str]) -> set[str]:
        """What an agent needs to take a conversation waiting in `queue` with its own `skills`: those and the queue's."""
        found = self.config.queues.get(queue or "")
        return set(skills) | set(found.skills if found else ())

    def anyone_present(self, queue: str, skills: list[str], now: datetime | None = None) -> bool:
        """Whether a present agent (online or away, heartbeat within the grace) works `queue` with every skill it
        needs there."""
        skills = sorted(self.required(queue, skills))
        cutoff = _iso((now or _now()) - timedelta(seconds=self.config.presence_grace_seconds))
        with self.store.reading() as db:
            rows = db.execute(
                f"SELECT queues, skills FROM presence WHERE {_PRESENT}", (cutoff,)
            ).fetchall()
        return any(queue in json.loads(q) and set(skills) <= set(json.loads(s)) for q, s in rows)

    def still_stranded(self, conversation_id: str, queue: str) -> bool:
        """Whether nobody present could take the conversation now (checked again right before it is passed on)."""
        return not self.anyone_present(queue, self.terms(conversation_id)[1])

    def stranded(self, now: datetime | None = None) -> list[tuple[str, str, str]]:
        """(conversation_id, queue, waiting_since) of conversations waiting in a queue that goes on when nobody is
        present (`when_nobody_present`) while no present agent could take them: the last one who could went offline
        (or their console's heartbeats stopped) after they were routed there. Read only; a few indexed queries per
        such queue."""
        skipping = [name for name, q in self.config.queues.items() if q.skips_when_nobody_present]
        if not skipping:
            return []
        cutoff = _iso((now or _now()) - timedelta(seconds=self.config.presence_grace_seconds))
        found: list[tuple[str, str, str]] = []
        with self.store.reading() as db:
            online = [(set(json.loads(q)), set(json.loads(s))) for q, s in db.execute(
                f"SELECT queues, skills FROM presence WHERE {_PRESENT}", (cutoff,))]
            for name in skipping:
                base = set(self.config.queues[name].skills)
                able = [skills for queues, skills in online if name in queues and base <= skills]
                # With somebody able to take the queue's plain conversations, only those needing more skills can be
                # stranded (few: most handoffs ask for none).
                rows = db.execute(
                    "SELECT c.conversation_id, c.waiting_since, coalesce(t.skills, '[]') FROM conversations c"
                    " LEFT JOIN terms t ON t.conversation_id = c.conversation_id WHERE c.queue = ? AND"
                    " c.state = 'handoff_pending' AND c.waiting_since IS NOT NULL"
                    + (" AND t.skills IS NOT NULL AND t.skills != '[]'" if able else ""),
                    (name,),
                ).fetchall()
                for cid, since, skills in rows:
                    need = base | set(json.loads(skills))
                    if not any(need <= have for have in able):
                        found.append((cid, name, since))
        return found

    # ---- presence --------------------------------------------------------------------------------------------

    def set_presence(
        self, agent_id: str, name: str, queues: list[str], skills: list[str], capacity: int, status: Status,
        now: datetime | None = None, heartbeat: bool = False,
    ) -> Presence:
        """Set the agent's presence; going `away` or `offline` withdraws their offers. A `heartbeat` only says the
        console is still there: it keeps whatever status the agent has now (an offer let lapse set them away; a
        heartbeat already on its way must not undo that), and sets `status` only for an agent never seen before."""
        now = now or _now()
        works = [*queues, personal_queue(agent_id)]
        with self.store.writing() as db:
            row = db.execute("SELECT status, since, idle_since FROM presence WHERE agent_id = ?", (agent_id,)).fetchone()
            if heartbeat and row is not None:
                status = row[0]
            changed = row is None or row[0] != status
            since = _iso(now) if changed else row[1]
            idle = _iso(now) if (changed and status == "online") or row is None else row[2]
            db.execute(
                "INSERT INTO presence (agent_id, name, status, since, heartbeat_at, idle_since, capacity, skills, queues)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET name = excluded.name,"
                " status = excluded.status, since = excluded.since, heartbeat_at = excluded.heartbeat_at,"
                " idle_since = excluded.idle_since, capacity = excluded.capacity, skills = excluded.skills,"
                " queues = excluded.queues",
                (agent_id, name, status, since, _iso(now), idle, capacity, json.dumps(skills), json.dumps(works)),
            )
            if changed:
                if status != "online":
                    self._withdraw(db, "agent_id = ?", (agent_id,), now)
                self._note(db, "presence", agent_id, now)
        self.assign(now)
        found = self.presence(agent_id, now)
        assert found is not None  # written above
        return found

    def presence_of(self, agent: LiveAgentInfo) -> Presence:
        """The agent's presence and load; `offline` (since now) for an agent who never reported one."""
        return self.presence(agent.agent_id) or Presence(
            agent_id=agent.agent_id, name=agent.name, status="offline", since=_now(), capacity=agent.capacity, load=0,
            skills=agent.skills)

    def presence(self, agent_id: str, now: datetime | None = None) -> Presence | None:
        now = now or _now()
        with self.store.reading() as db:
            row = db.execute(
                "SELECT status, since, capacity, skills, name FROM presence WHERE agent_id = ?", (agent_id,)
            ).fetchone()
            load = self._load(db, agent_id, now)
        if row is None:
            return None
        return Presence(agent_id=agent_id, name=row[4], status=row[0], since=datetime.fromisoformat(row[1]),
                        capacity=row[2], load=load, skills=json.loads(row[3]))

    def presences(self, now: datetime | None = None) -> list[Presence]:
        now = now or _now()
        with self.store.reading() as db:
            rows = db.execute(
                "SELECT agent_id, status, since, capacity, skills, name FROM presence ORDER BY agent_id").fetchall()
            loads = {r[0]: self._load(db, r[0], now) for r in rows}
        return [Presence(agent_id=a, name=n, status=s, since=datetime.fromisoformat(since), capacity=c, load=loads[a],
                         skills=json.loads(sk)) for a, s, since, c, sk, n in rows]

    def team(self, agents: list[LiveAgentInfo], now: datetime | None = None) -> list[Presence]:
        """These agents' presence and load, in one read of the store (two statements whatever their number); an
        agent who never reported a presence is `offline`. The console's "Team" list."""
        if not agents:
            return []
        now = now or _now()
        ids = [a.agent_id for a in agents]
        marks = ", ".join("?" for _ in ids)
        with self.store.reading() as db:
            rows = {r[0]: r[1:] for r in db.execute(
                f"SELECT agent_id, status, since FROM presence WHERE agent_id IN ({marks})", tuple(ids)).fetchall()}
            loads = dict(db.execute(
                f"SELECT agent_id, count(*) FROM ({_holding(f'IN ({marks})')}) AS held GROUP BY agent_id",
                (*ids, *ids, _iso(now - CLAIM_HOLD), *ids),
            ).fetchall())
        team = []
        for a in agents:
            status, since = rows.get(a.agent_id, ("offline", None))
            team.append(Presence(agent_id=a.agent_id, name=a.name, status=status,
                                 since=datetime.fromisoformat(since) if since else now, capacity=a.capacity,
                                 load=loads.get(a.agent_id, 0), skills=a.skills))
        return team

    def _load_of(self, agent_id: str) -> int:
        with self.store.reading() as db:
            return self._load(db, agent_id, _now())

    @staticmethod
    def _load(db: Db, agent_id: str, now: datetime) -> int:
        """The agent's conversations, claims and accepts in flight, and open offers (each conversation once)."""
        return db.execute(f"SELECT count(*) FROM ({_holding('= ?')}) AS held",
                          (agent_id, agent_id, _iso(now - CLAIM_HOLD), agent_id)).fetchone()[0]

    # ---- claims and offers -------------------------------------------------------------------------------------

    def terms(self, conversation_id: str) -> tuple[int, list[str]]:
        with self.store.reading() as db:
            row = db.execute("SELECT priority, skills FROM terms WHERE conversation_id = ?", (conversation_id,)).fetchone()
        return (row[0], json.loads(row[1])) if row else (0, [])

    def lacks(self, agent_skills: Iterable[str], conversation_id: str, queue: str | None) -> list[str]:
        """The skills a conversation waiting in `queue` needs that an agent lacks (empty: none)."""
        with self.store.reading() as db:
            return self._lacks(db, set(agent_skills), conversation_id, queue)

    def _lacks(self, db: Db, agent_skills: set[str], conversation_id: str, queue: str | None) -> list[str]:
        row = db.execute("SELECT skills FROM terms WHERE conversation_id = ?", (conversation_id,)).fetchone()
        return sorted(self.required(queue, json.loads(row[0]) if row else []) - agent_skills)

    def reserve(self, agent_id: str, skills: Iterable[str], capacity: int, conversation_id: str, queue: str | None,
                now: datetime | None = None) -> None:
        """Hold a place for a claim of a conversation waiting in `queue`: refused (Refused) when the agent lacks a
        skill it needs there, is at capacity, or it is offered to someone else right now. Ended by the
        conversation's next bell, or `release`."""
        now = now or _now()
        with self.store.writing() as db:
            missing = self._lacks(db, set(skills), conversation_id, queue)
            if missing:
                raise Refused(403, f"the conversation needs the skill(s) {', '.join(missing)}, which {agent_id} lacks")
            offered = db.execute(
                "SELECT agent_id FROM offers WHERE conversation_id = ? AND status IN ('open', 'accepting')"
                " AND agent_id != ?", (conversation_id, agent_id),
            ).fetchone()
            if offered is not None:
                raise Refused(409, f"it is offered to {offered[0]} right now")
            held = db.execute(
                f"SELECT r.agent_id FROM reservations r WHERE r.conversation_id = ? AND {_HELD}",
                (conversation_id, _iso(now - CLAIM_HOLD)),
            ).fetchone()
            if held is not None and held[0] != agent_id:
                # Their claim is in flight (it took its place first): the first claim wins.
                raise Refused(409, f"{held[0]} claimed it first")
            load = self._load(db, agent_id, now)
            mine = db.execute(
                "SELECT 1 FROM offers WHERE conversation_id = ? AND agent_id = ? AND status IN ('open', 'accepting')",
                (conversation_id, agent_id),
            ).fetchone()
            if held is None and mine is None and load >= capacity:
                raise Refused(409, f"{agent_id} is at capacity ({load} of {capacity} conversations)")
            self._hold(db, conversation_id, agent_id, now)
            db.execute("UPDATE presence SET idle_since = ? WHERE agent_id = ?", (_iso(now), agent_id))

    @staticmethod
    def _hold(db: Db, conversation_id: str, agent_id: str, now: datetime) -> None:
        """A place for the agent while the conversation still waits as it does now (see _HELD)."""
        db.execute(
            "INSERT INTO reservations (conversation_id, agent_id, at, waiting_since) SELECT ?, ?, ?, waiting_since"
            " FROM conversations WHERE conversation_id = ? ON CONFLICT (conversation_id) DO UPDATE SET"
            " agent_id = excluded.agent_id, at = excluded.at, waiting_since = excluded.waiting_since",
            (conversation_id, agent_id, _iso(now), conversation_id),
        )

    def release(self, agent_id: str, conversation_id: str) -> None:
        """A claim that failed gives its place back."""
        with self.store.writing() as db:
            db.execute("DELETE FROM reservations WHERE conversation_id = ? AND agent_id = ?", (conversation_id, agent_id))
        self.assign()

    def offers(self, agent_id: str, now: datetime | None = None) -> list[Offer]:
        now = now or _now()
        with self.store.reading() as db:
            rows = db.execute(
                "SELECT o.offer_id, o.conversation_id, o.queue, o.agent_id, o.created_at, o.expires_at, o.status,"
                " c.reason, c.summary, coalesce(t.priority, 0), o.waiting_since FROM offers o"
                " LEFT JOIN conversations c ON c.conversation_id = o.conversation_id"
                " LEFT JOIN terms t ON t.conversation_id = o.conversation_id"
                " WHERE o.agent_id = ? AND o.status = 'open' AND o.expires_at > ? ORDER BY o.created_at",
                (agent_id, _iso(now)),
            ).fetchall()
        return [self._offer(r) for r in rows]

    @staticmethod
    def _offer(r: tuple) -> Offer:
        return Offer(offer_id=r[0], conversation_id=r[1], queue=r[2], agent_id=r[3],
                     offered_at=datetime.fromisoformat(r[4]), expires_at=datetime.fromisoformat(r[5]), status=r[6],
                     reason=r[7], summary=r[8], priority=r[9], waiting_since=datetime.fromisoformat(r[10]))

    def take_offer(self, offer_id: str, agent_id: str, now: datetime | None = None) -> Offer:
        """Start accepting an offer: it must be this agent's and still open (Refused says why not)."""
        now = now or _now()
        with self.store.writing() as db:
            row = db.execute(
                "SELECT o.offer_id, o.conversation_id, o.queue, o.agent_id, o.created_at, o.expires_at, o.status,"
                " NULL, NULL, 0, o.waiting_since FROM offers o WHERE o.offer_id = ? AND o.agent_id = ?",
                (offer_id, agent_id),
            ).fetchone()
            if row is None:
                raise Refused(404, f"no offer '{offer_id}' for {agent_id}")
            offer = self._offer(row)
            if offer.status == "open" and offer.expires_at <= now:
                raise Refused(409, "the offer has lapsed: it went to the next agent")
            if offer.status != "open":
                why = {"expired": "it lapsed and went to the next agent", "declined": "you declined it",
                       "accepted": "you accepted it already", "withdrawn": "the conversation no longer waits for you",
                       "accepting": "it is being accepted already"}.get(offer.status, offer.status)
                raise Refused(409, f"the offer is no longer open: {why}")
            db.execute("UPDATE offers SET status = 'accepting', ended_at = ? WHERE offer_id = ?", (_iso(now), offer_id))
        return offer

    def end_offer(self, offer: Offer, accepted: bool, now: datetime | None = None) -> None:
        """An accept ended: the conversation is the agent's (its place held until the bell says so), or not."""
        now = now or _now()
        with self.store.writing() as db:
            db.execute("UPDATE offers SET status = ?, ended_at = ? WHERE offer_id = ?",
                       ("accepted" if accepted else "withdrawn", _iso(now), offer.offer_id))
            if accepted:
                # Its place, until the bell that makes it the agent's lands (if it has, the hold counts nothing).
                self._hold(db, offer.conversation_id, offer.agent_id, now)
                db.execute("UPDATE presence SET idle_since = ? WHERE agent_id = ?", (_iso(now), offer.agent_id))
            self._note(db, "offer", offer.agent_id, now)
        self.assign(now)

    def decline(self, offer_id: str, agent_id: str, now: datetime | None = None) -> None:
        now = now or _now()
        with self.store.writing() as db:
            row = db.execute("SELECT status, expires_at FROM offers WHERE offer_id = ? AND agent_id = ?",
                             (offer_id, agent_id)).fetchone()
            if row is None:
                raise Refused(404, f"no offer '{offer_id}' for {agent_id}")
            if row[0] != "open" or row[1] <= _iso(now):
                raise Refused(409, f"the offer is no longer open ({'expired' if row[0] == 'open' else row[0]})")
            db.execute("UPDATE offers SET status = 'declined', ended_at = ? WHERE offer_id = ?", (_iso(now), offer_id))
            self._note(db, "offer", agent_id, now)
        self.assign(now)

    # ---- wrap-up codes ------------------------------------------------------------------------------------------

    def wrapped_up(self, conversation_id: str, agent_id: str, action: str, code: str) -> None:
        with self.store.writing() as db:
            db.execute("INSERT INTO wrap_ups (conversation_id, agent_id, action, code, at) VALUES (?, ?, ?, ?, ?)",
                       (conversation_id, agent_id, action, code, _iso(_now())))

    def report(self) -> dict:
        """Wrap-up codes counted (in all and per agent), and ratings per agent (count and mean)."""
        with self.store.reading() as db:
            codes = db.execute("SELECT code, count(*) FROM wrap_ups GROUP BY code ORDER BY code").fetchall()
            per_agent = db.execute(
                "SELECT agent_id, code, count(*) FROM wrap_ups GROUP BY agent_id, code ORDER BY agent_id, code"
            ).fetchall()
            ratings = db.execute(
                "SELECT agent_id, count(*), avg(score) FROM ratings GROUP BY agent_id ORDER BY agent_id"
            ).fetchall()
        agents: dict[str, dict] = {}
        for agent, code, n in per_agent:
            agents.setdefault(agent, {"wrap_ups": {}, "ratings": 0, "mean_rating": None})["wrap_ups"][code] = n
        for agent, n, mean in ratings:
            slot = agents.setdefault(agent, {"wrap_ups": {}, "ratings": 0, "mean_rating": None})
            # PostgreSQL's avg is a numeric (a Decimal here), SQLite's a float.
            slot["ratings"], slot["mean_rating"] = n, round(float(mean), 2)
        return {"wrap_ups": dict(codes), "agents": agents}

    # ---- assignment -------------------------------------------------------------------------------------------

    def assign(self, now: datetime | None = None) -> int:
        """One round: lapse offers past their time (their agents set away), set agents whose heartbeats stopped
        offline, withdraw offers of conversations that no longer wait, then offer what waits in push and sticky queues
        to whoever can take it. Returns how many offers were made. Idempotent: any process may run it any time."""
        now = now or _now()
        pushing = self.config.pushing_queues()
        # Most rounds have nothing to do (nobody reports presence, nothing is offered): found out with a read, which
        # never waits for the store's write lock, so a burst of bells is not slowed by rounds that change nothing.
        with self.store.reading() as db:
            if not self._work_to_do(db, now, list(pushing)):
                return 0
        with self.store.writing() as db:
            self._lapse(db, now)
            if not pushing:
                return 0
            made = 0
            free = self._free_agents(db, now)
            for name, queue in pushing.items():
                if not any(name in a["queues"] and a["free"] > 0 for a in free.values()):
                    continue
                made += self._offer_round(db, name, queue, free, now)
            return made

    def _work_to_do(self, db: Db, now: datetime, pushing: list[str]) -> bool:
        """Whether a round would change anything: an offer to lapse or withdraw, an agent past the grace, or (push
        queues) an online agent while something waits there unoffered."""
        cutoff = _iso(now - timedelta(seconds=self.config.presence_grace_seconds))
        if db.execute("SELECT 1 FROM presence WHERE status != 'offline' LIMIT 1").fetchone() is None and \
                db.execute("SELECT 1 FROM offers WHERE status IN ('open', 'accepting') LIMIT 1").fetchone() is None:
            return False  # nobody has reported presence, nothing is offered
        checks = [
            ("SELECT 1 FROM offers WHERE status = 'open' AND expires_at <= ? LIMIT 1", (_iso(now),)),
            ("SELECT 1 FROM offers WHERE status = 'accepting' AND ended_at < ? LIMIT 1", (_iso(now - ACCEPT_HOLD),)),
            ("SELECT 1 FROM presence WHERE status != 'offline' AND heartbeat_at < ? LIMIT 1", (cutoff,)),
            ("SELECT 1 FROM offers o LEFT JOIN conversations c ON c.conversation_id = o.conversation_id WHERE"
             " o.status = 'open' AND (c.conversation_id IS NULL OR c.state != 'handoff_pending' OR c.queue IS"
             " DISTINCT FROM o.queue OR c.waiting_since IS DISTINCT FROM o.waiting_since) LIMIT 1", ()),
        ]
        if pushing:
            marks = ", ".join("?" for _ in pushing)
            checks.append((
                f"SELECT 1 FROM conversations c WHERE c.queue IN ({marks}) AND c.state = 'handoff_pending' AND"
                " c.waiting_since IS NOT NULL AND NOT EXISTS (SELECT 1 FROM offers o WHERE o.conversation_id ="
                " c.conversation_id AND o.status IN ('open', 'accepting')) AND EXISTS (SELECT 1 FROM presence"
                f" WHERE {_ONLINE}) LIMIT 1", (*pushing, cutoff)))
        return any(db.execute(sql, args).fetchone() is not None for sql, args in checks)

    def _lapse(self, db: Db, now: datetime) -> None:
        lapsed = db.execute(
            "SELECT offer_id, agent_id FROM offers WHERE status = 'open' AND expires_at <= ?", (_iso(now),)
        ).fetchall()
        for offer_id, agent_id in lapsed:
            db.execute("UPDATE offers SET status = 'expired', ended_at = ? WHERE offer_id = ?", (_iso(now), offer_id))
            self._note(db, "offer", agent_id, now)
            if db.execute("UPDATE presence SET status = 'away', since = ? WHERE agent_id = ? AND status = 'online'",
                          (_iso(now), agent_id)).rowcount:
                # Not at their desk: their other offers go on too.
                self._withdraw(db, "agent_id = ?", (agent_id,), now)
                self._note(db, "presence", agent_id, now)
        db.execute("UPDATE offers SET status = 'withdrawn', ended_at = ? WHERE status = 'accepting' AND ended_at < ?",
                   (_iso(now), _iso(now - ACCEPT_HOLD)))
        cutoff = _iso(now - timedelta(seconds=self.config.presence_grace_seconds))
        gone = db.execute(
            "SELECT agent_id FROM presence WHERE status != 'offline' AND heartbeat_at < ?", (cutoff,)
        ).fetchall()
        for (agent_id,) in gone:
            db.execute("UPDATE presence SET status = 'offline', since = ? WHERE agent_id = ?", (_iso(now), agent_id))
            self._withdraw(db, "agent_id = ?", (agent_id,), now)
            self._note(db, "presence", agent_id, now)
        # Offers of conversations that no longer wait where they were offered (claimed, cancelled, moved, closed).
        stale = db.execute(
            "SELECT o.offer_id, o.agent_id FROM offers o LEFT JOIN conversations c ON c.conversation_id ="
            " o.conversation_id WHERE o.status = 'open' AND (c.conversation_id IS NULL OR c.state != 'handoff_pending'"
            " OR c.queue IS DISTINCT FROM o.queue OR c.waiting_since IS DISTINCT FROM o.waiting_since)"
        ).fetchall()
        for offer_id, agent_id in stale:
            db.execute("UPDATE offers SET status = 'withdrawn', ended_at = ? WHERE offer_id = ?", (_iso(now), offer_id))
            self._note(db, "offer", agent_id, now)

    def _withdraw(self, db: Db, where: str, args: tuple, now: datetime) -> None:
        rows = db.execute(f"SELECT offer_id, agent_id FROM offers WHERE status = 'open' AND {where}", args).fetchall()
        for offer_id, agent_id in rows:
            db.execute("UPDATE offers SET status = 'withdrawn', ended_at = ? WHERE offer_id = ?", (_iso(now), offer_id))
            self._note(db, "offer", agent_id, now)

    def _free_agents(self, db: Db, now: datetime) -> dict[str, dict]:
        cutoff = _iso(now - timedelta(seconds=self.config.presence_grace_seconds))
        rows = db.execute(
            f"SELECT agent_id, capacity, skills, queues, idle_since FROM presence WHERE {_ONLINE}", (cutoff,),
        ).fetchall()
        agents = {}
        for agent_id, capacity, skills, queues, idle in rows:
            free = capacity - self._load(db, agent_id, now)
            agents[agent_id] = {"free": free, "skills": set(json.loads(skills)), "queues": set(json.loads(queues)),
                                "idle": idle}
        return agents

    def _waiting_unoffered(self, db: Db, name: str, now: datetime, after: tuple | None) -> list[tuple]:
        """A page (SCAN rows) of what waits in queue `name` unoffered and unclaimed, in the waiting list's order
        (priority, then oldest, then id), after the row `after` (its priority, waiting_since, id)."""
        page = ""
        args: tuple = ()
        if after is not None:
            page = (" AND (coalesce(t.priority, 0) < ? OR (coalesce(t.priority, 0) = ? AND (c.waiting_since > ?"
                    " OR (c.waiting_since = ? AND c.conversation_id > ?))))")
            args = (after[0], after[0], after[1], after[1], after[2])
        return db.execute(
            "SELECT c.conversation_id, c.waiting_since, coalesce(t.skills, '[]'), h.agent_id, h.at,"
            " coalesce(t.priority, 0) FROM conversations c"
            " LEFT JOIN terms t ON t.conversation_id = c.conversation_id"
            " LEFT JOIN helpers h ON h.conversation_id = c.conversation_id"
            " WHERE c.queue = ? AND c.state = 'handoff_pending' AND c.waiting_since IS NOT NULL AND NOT EXISTS"
            " (SELECT 1 FROM offers o WHERE o.conversation_id = c.conversation_id AND o.status IN ('open', 'accepting'))"
            f" AND NOT EXISTS (SELECT 1 FROM reservations r WHERE r.conversation_id = c.conversation_id AND {_HELD})"
            f"{page} ORDER BY coalesce(t.priority, 0) DESC, c.waiting_since, c.conversation_id LIMIT ?",
            (name, _iso(now - CLAIM_HOLD), *args, SCAN),
        ).fetchall()

    def _offer_round(self, db: Db, name: str, queue, free: dict[str, dict], now: datetime) -> int:
        """Offer what waits in queue `name`, in the waiting list's order, to the free agents who can take it. Page
        after page while someone of the queue has room (up to SCAN_PAGES pages): a conversation that only an absent
        skill could take never holds back the ones behind it."""
        made = 0
        sticky_since = _iso(now - timedelta(minutes=queue.sticky_minutes))
        after: tuple | None = None
        for _ in range(SCAN_PAGES):
            rows = self._waiting_unoffered(db, name, now, after)
            made += self._offer_page(db, name, queue, free, now, rows, sticky_since)
            if len(rows) < SCAN or not any(name in i["queues"] and i["free"] > 0 for i in free.values()):
                break
            after = (rows[-1][5], rows[-1][1], rows[-1][0])
        return made

    def _offer_page(self, db: Db, name: str, queue, free: dict[str, dict], now: datetime, rows: list[tuple],
                    sticky_since: str) -> int:
        made = 0
        for cid, since, skills, helper, helped_at, _ in rows:
            need = set(json.loads(skills)) | set(queue.skills)
            able = [a for a, info in free.items() if info["free"] > 0 and name in info["queues"] and need <= info["skills"]]
            if not able:
                if not any(name in info["queues"] and info["free"] > 0 for info in free.values()):
                    break
                continue
            tried = {r[0] for r in db.execute(
                "SELECT agent_id FROM offers WHERE conversation_id = ? AND waiting_since = ?", (cid, since))}
            if (queue.assignment == "sticky" and helper in able and helper not in tried and helped_at is not None
                    and helped_at >= sticky_since):
                pick = helper
            else:
                fresh = [a for a in able if a not in tried] or able
                pick = min(fresh, key=lambda a: (free[a]["idle"], a))
            offer_id = "of_" + uuid.uuid4().hex[:20]
            db.execute(
                "INSERT INTO offers (offer_id, conversation_id, queue, agent_id, waiting_since, created_at, expires_at,"
                " status) VALUES (?, ?, ?, ?, ?, ?, ?, 'open')",
                (offer_id, cid, name, pick, since, _iso(now), _iso(now + timedelta(seconds=queue.offer_seconds))),
            )
            free[pick]["free"] -= 1
            self._note(db, "offer", pick, now)
            made += 1
        return made

    @staticmethod
    def _note(db: Db, kind: str, agent_id: str, now: datetime) -> None:
        """Wake the desk streams of `agent_id` (every API process tails the log)."""
        db.execute(
            "INSERT INTO bells (conversation_id, seq, prev_seq, state, owner, at) VALUES ('', 0, 0, ?, ?, ?)",
            (kind, agent_id, _iso(now)),
        )
        db.notify()
