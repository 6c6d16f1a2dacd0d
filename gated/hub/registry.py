"""The sites' registries from the hub: snapshots out, revocations, gates that fall behind.

``gated hub registry publish FILE.csv --site S`` reads the CSV with the gate's own
checks (:func:`gated.registry.read_csv`: a bad row named by its line, nothing
published, exit 2), makes the site's next snapshot (docs/mqtt.md "Registry sync"),
checks it as a gate will (:func:`gated.mqtt.registry_sync.parse`, and
``[hub] registry_max_bytes``, the gates' limit), and publishes it retained, QoS 1, on
``{prefix}/{site}/registry``.

- **Versions.** The next version is one above the highest the hub made for the site,
  confirmed or not (``--above N``: above N, when higher), never above 2^53-1, the most a
  gate takes (a clear error, nothing made). A ``registry_version`` a gate reports is never
  taken for the hub's: one forged status from a stolen gate account would otherwise use
  up the site's versions for good. A gate reporting one above the hub's is named on
  stderr, and the snapshot still goes out (that gate refuses it as stale, the others
  take it). That is a real gate when its registry came from elsewhere: the hub's
  database was restored from a backup older than the last publish, or replaced, or
  another hub published for the site. The operator then publishes again with
  ``--above V``, V the highest version the note names, and every gate takes the new
  snapshot. A version is written to ``hub_registry`` before it is sent and marked
  ``published_at`` only on the broker's PUBACK. When the broker cannot be reached, or
  refuses (an MQTT 5 PUBACK with a failure reason; a 3.1.1 broker drops a refused
  message silently), the row keeps ``published_at`` empty and says why in ``error``;
  the command exits 1. Its number is never given again (the broker may have taken it
  though the PUBACK was lost), and it is not the site's latest: :func:`latest_versions`
  and every later snapshot build on versions the broker confirmed.
- **Revocations** (``gated hub revoke --site S --card UID | --jti ID``) are kept in
  ``hub_revokes`` and carried into every later snapshot of the site
  (``revoked_cards``, ``revoked_passes``, ``revoked_persons``), so a new CSV never
  un-revokes. A revocation makes version N+1 = the latest confirmed snapshot plus it:
  the delta ``{"type": "delta", "version": N+1, "revoked_cards": [...]}`` goes to
  every gate of the site the hub knows (``T/cmd/registry``, with ``req``, ``ts``,
  ``by``), then snapshot N+1 retained on the site's topic, for a gate that was away.
  A gate at N applies the delta at once; any other takes the snapshot (a delta after
  the snapshot is refused as stale: the same registry). The revocation is recorded
  first: when the broker is down it still goes out with the site's next version. A
  site with no snapshot from the hub yet is refused: an empty snapshot would
  deactivate every person the gates imported themselves (use the gate's
  ``cmd/revoke`` there).
- **Follow-up** (:func:`follow_up`, called by the running hub when a gate comes back
  online or reports a ``registry_version`` below its site's latest): a gate exactly
  one version behind a revocation version gets that version's delta (at most once a
  :data:`DELTA_EVERY_S` per gate). Otherwise the retained snapshot is what it needs,
  and it gets it on subscribing; only when a gate stays behind for
  :data:`GRACE_S` while online (the retained message is gone: a broker restarted
  without persistence) is the snapshot published again, at most once a
  :data:`REPUBLISH_S` per site, since every online gate of the site receives it.
  What was sent when is kept in ``hub_meta``, shared by the hub's instances. It runs on
  the hub's writer thread at every online status: it reads versions only, and a
  snapshot's body only to publish it again.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import logging
import re
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gated.config.sections import _check_name
from gated.errors import GatedError, RegistryImportError
from gated.hub.broker import Broker, PublishError
from gated.hub.config import HubConfig, load_hub_config
from gated.hub.store import HubStore, is_online
from gated.mqtt import registry_sync
from gated.privacy import mask_uid
from gated.registry import Person, normalise_uid, read_csv

log = logging.getLogger(__name__)

#: A gate one version behind a revocation gets its delta again after this long.
DELTA_EVERY_S = 60.0
#: Seconds a gate may stay behind while online before the snapshot is published again.
GRACE_S = 120.0
#: Least seconds between two re-publications of a site's snapshot.
REPUBLISH_S = 600.0

#: ``what`` in hub_revokes -> the message's list.
REVOKED = {"card": "revoked_cards", "pass": "revoked_passes", "person": "revoked_persons"}

Publish = Callable[[str, bytes, int, bool], Any]


def _site(value: str) -> str:
    try:
        return _check_name(value)
    except ValueError as exc:
        raise GatedError(f"--site {value!r}: {exc}") from None


def persons_of(persons: Sequence[Person], cards: dict[str, str]) -> list[dict[str, Any]]:
    """The snapshot's ``persons`` (docs/mqtt.md): every person with their cards."""
    by_person: dict[str, list[str]] = {}
    for uid, pid in cards.items():
        by_person.setdefault(pid, []).append(uid)
    return [{**vars(p), "cards": sorted(by_person.get(p.id, []))} for p in persons]


def _encode(msg: Any) -> str:
    return json.dumps(msg, ensure_ascii=False, separators=(",", ":"))


def _body(version: int, persons_json: str, revoked: dict[str, list[str]]) -> str:
    """The snapshot message, its ``persons`` encoded beforehand (outside the store's
    write transaction: it takes seconds for 200,000 persons), with every revocation."""
    lists = _encode({REVOKED[what]: refs for what, refs in revoked.items()})[1:-1]
    return f'{{"type":"snapshot","version":{version},"persons":{persons_json},{lists}}}'


def _check(persons: list[dict[str, Any]], name: str) -> None:
    """The persons as a gate reads them, or RegistryImportError (nothing published)."""
    try:
        registry_sync.parse({"type": "snapshot", "version": 1, "persons": persons})
    except registry_sync.RegistryMessageError as exc:
        # A check the CSV's own does not make (a name longer than a gate takes): say whose.
        found = re.match(r"persons\[(\d+)\]", str(exc))
        who = f"person {persons[int(found[1])]['id']}: " if found else ""
        raise RegistryImportError(
            f"{name}: {who}the gates would refuse this snapshot: {exc}"
        ) from None


def _sized(body: str, name: str, limit: int) -> bytes:
    payload = body.encode("utf-8")
    if len(payload) > limit:
        raise RegistryImportError(
            f"{name}: the snapshot is {len(payload)} bytes, above [hub] registry_max_bytes"
            f" ({limit}): the gates would refuse it"
        )
    return payload


def _send(store: HubStore, config: HubConfig, site: str, version: int, messages: Any) -> None:
    """Send, then mark ``version`` published (or not, with why)."""
    try:
        with Broker(config) as broker:
            broker.send(messages)
    except PublishError as exc:
        store.begin()
        store.registry_sent(site, version, None, str(exc)[:500])
        store.commit()
        raise PublishError(
            f"{exc}\nsite {site}: version {version} was NOT published (kept in the history"
            f" as not confirmed; the next one is {version + 1})"
        ) from None
    store.begin()
    store.registry_sent(site, version, time.time(), None)
    store.commit()


def _next_version(store: HubStore, site: str, above: int = 0) -> int:
    """One above the highest version the hub made for ``site`` (or ``above``, when higher);
    a gate reporting a higher one is named on stderr (see the module docstring)."""
    made = store.registry_made(site)
    base = max(made, above)
    last = registry_sync.MAX_VERSION
    if base >= last:
        raise GatedError(
            f"site {site}: version {base} is the last a gate takes (at most {last}):"
            " no version can follow it"
        )
    for gate, v in store.registry_ahead(site, base):
        if v >= last:
            follows = f"no version can follow it (a gate takes at most {last})"
        else:
            follows = (
                f"publish with --above {v} if that gate's registry really came from elsewhere"
                f" (it refuses version {base + 1} as stale)"
            )
        print(
            f"note: {site}/{gate} reports registry version {v}, above the hub's {made}: {follows}",
            file=sys.stderr,
        )
    return base + 1


def _registry_topic(config: HubConfig, site: str) -> str:
    return f"{config.mqtt.topic_prefix}/{site}/registry"


def cmd_publish(args: argparse.Namespace) -> int:
    """``gated hub registry publish FILE.csv --site S [--above N]``: the site's next
    retained snapshot."""
    config = load_hub_config(args.config)
    site = _site(args.site)
    persons, cards = read_csv(Path(args.file))
    listed = persons_of(persons, cards)
    _check(listed, args.file)
    persons_json = _encode(listed)
    store = HubStore(config.database_path)
    try:
        store.begin()
        try:
            version = _next_version(store, site, args.above or 0)
            revoked = store.revokes(site)
            body = _body(version, persons_json, revoked)
            payload = _sized(body, args.file, config.hub.registry_max_bytes)
            digest = hashlib.sha256(payload).hexdigest()
            store.registry_add(site, version, body, len(persons), len(cards), digest, time.time())
            store.commit()
        except BaseException:
            store.rollback()
            raise
        _send(store, config, site, version, [(_registry_topic(config, site), payload, True)])
    finally:
        store.close()
    kept = sum(len(v) for v in revoked.values())
    print(
        f"site {site}: registry version {version} published ({len(persons)} persons,"
        f" {len(cards)} cards, {kept} revocations kept)"
    )
    return 0


def _operator(hub_id: str) -> str:
    try:
        return f"hub:{hub_id} ({getpass.getuser()})"
    except (OSError, KeyError):
        return f"hub:{hub_id}"


def _delta(version: int, revoked: dict[str, list[str]], hub_id: str, now: float) -> bytes:
    msg: dict[str, Any] = {
        "type": "delta",
        "version": version,
        **{REVOKED[what]: refs for what, refs in revoked.items() if refs},
        "req": f"hub-registry-{version}-{secrets.token_hex(4)}",
        "ts": now,
        "by": f"hub:{hub_id}",
    }
    return _encode(msg).encode("utf-8")


def _revoked_ref(args: argparse.Namespace) -> tuple[str, str]:
    if args.card is not None:
        uid = normalise_uid(args.card)
        if not uid or len(uid) > 32 or any(c not in "0123456789ABCDEF" for c in uid):
            raise GatedError(f"--card: expected 1 to 32 hex digits, got {args.card!r}")
        return "card", uid
    jti = args.jti.strip()
    if not jti or len(jti) > 128 or not jti.isprintable():
        raise GatedError("--jti: expected the pass's id (1 to 128 printable characters)")
    return "pass", jti


def cmd_revoke(args: argparse.Namespace) -> int:
    """``gated hub revoke --site S (--card UID | --jti ID)``: at every gate of the site."""
    config = load_hub_config(args.config)
    site = _site(args.site)
    what, ref = _revoked_ref(args)
    prefix = config.mqtt.topic_prefix
    store = HubStore(config.database_path)
    try:
        base = store.registry_latest(site)
        if base is None:
            raise GatedError(
                f"site {site}: the hub has published no registry for it yet; publish one"
                " first (gated hub registry publish), or revoke at a gate (cmd/revoke)"
            )
        listed = json.loads(base["body"])["persons"]
        if what == "card" and not any(ref in p["cards"] for p in listed):
            # Still sent (a gate may hold the card from a CSV of its own): a typo shows.
            print(
                f"note: no person of {site}'s registry version {base['version']} holds"
                f" card {mask_uid(ref)}",
                file=sys.stderr,
            )
        persons_json = _encode(listed)
        store.begin()
        try:
            latest = store.registry_history(site, published_only=True, limit=1)
            if latest[0]["version"] != base["version"]:
                raise GatedError(f"site {site}: a new registry version came meanwhile: run again")
            now = time.time()
            version = _next_version(store, site)
            store.revoke_add(site, version, what, ref, now, _operator(config.hub.id))
            body = _body(version, persons_json, store.revokes(site))
            payload = body.encode("utf-8")
            digest = hashlib.sha256(payload).hexdigest()
            store.registry_add(site, version, body, base["persons"], base["cards"], digest, now)
            gates = store.site_gates(site)
            store.commit()
        except BaseException:
            store.rollback()
            raise
        delta = _delta(version, {what: [ref]}, config.hub.id, now)
        # The delta is exact only on the snapshot this version was built on.
        exact = base["version"] == version - 1
        messages = [
            (f"{prefix}/{site}/{g['gate']}/cmd/registry", delta, False)
            for g in (gates if exact else [])
        ]
        messages.append((_registry_topic(config, site), payload, True))
        try:
            _send(store, config, site, version, messages)
        except PublishError as exc:
            raise PublishError(
                f"{exc}\nthe revocation is recorded at the hub: it goes out with the site's"
                " next version (run this command again once the broker is back)"
            ) from None
    finally:
        store.close()
    print(f"site {site}: {what} revoked in registry version {version}")
    if not exact:
        print(
            f"  no delta (version {version - 1} is not one the hub confirmed):"
            f" every gate takes snapshot {version}"
        )
    for g in gates if exact else []:
        state = "online" if is_online(g, now, config.hub.offline_after_s) else "offline"
        later = "" if state == "online" else f": takes snapshot {version} when it reconnects"
        print(f"  delta {version} sent to {site}/{g['gate']} ({state}{later})")
    if not gates:
        print(f"  no gate of {site} known to the hub: snapshot {version} is retained for them")
    return 0


def latest_versions(store: HubStore) -> dict[str, int]:
    """Each site's newest registry version the broker confirmed: a gate below it is behind."""
    return store.registry_versions()


def follow_up(
    store: HubStore, config: HubConfig, site: str, gate: str, publish: Publish, now: float
) -> int:
    """Send ``gate`` what it lacks of its site's registry (see the module docstring); the
    number of messages published. Writes ``hub_meta`` (in the caller's transaction if
    one is open)."""
    own = not store.conn.in_transaction
    if own:
        store.begin()
    try:
        sent = _follow_up(store, config, site, gate, publish, now)
        if own:
            store.commit()
        return sent
    except BaseException:
        if own:
            store.rollback()
        raise


def _follow_up(
    store: HubStore, config: HubConfig, site: str, gate: str, publish: Publish, now: float
) -> int:
    key = f"registry_follow:{site}/{gate}"
    # Versions only: this runs on every online status of every gate, on the hub's writer
    # thread; a snapshot's body (up to registry_max_bytes) is read only to publish it again.
    confirmed = store.registry_confirmed(site, 2)
    row = next((g for g in store.site_gates(site) if g["gate"] == gate), None)
    if not confirmed or row is None or not is_online(row, now, config.hub.offline_after_s):
        return 0
    have = int(row["registry_version"] or 0)
    version = confirmed[0]
    if have >= version:
        store.set_meta(key, None)
        return 0
    raw = store.meta(key)
    record: dict[str, Any] = json.loads(raw) if raw else {}
    if (
        record.get("latest") != version
        or record.get("have") != have
        or now - float(record.get("last", 0)) > config.hub.offline_after_s
    ):
        # Behind at this version since now (or back after an absence: the retained
        # snapshot is on its way to it again).
        record = {"latest": version, "have": have, "since": now, "delta_at": None}
    record["last"] = now
    sent = 0
    exact = have == version - 1 and confirmed[-1] == have  # what the delta was built on
    revoked: dict[str, list[str]] = store.revokes(site, version) if exact else {}
    delta_at = record.get("delta_at")
    if (
        exact
        and any(revoked.values())
        and (delta_at is None or now - float(delta_at) >= DELTA_EVERY_S)
    ):
        prefix = config.mqtt.topic_prefix
        publish(
            f"{prefix}/{site}/{gate}/cmd/registry",
            _delta(version, revoked, config.hub.id, now),
            1,
            False,
        )
        record["delta_at"] = now
        sent += 1
        log.info("registry: delta %d sent to %s/%s (at %d)", version, site, gate, have)
    elif now - float(record["since"]) >= GRACE_S:
        site_key = f"registry_republished:{site}"
        raw_site = store.meta(site_key)
        last = json.loads(raw_site) if raw_site else {}
        body = None
        if now - float(last.get("at", 0)) >= REPUBLISH_S:
            body = store.registry_body(site, version)
        if body is not None:
            publish(_registry_topic(config, site), body.encode("utf-8"), 1, True)
            store.set_meta(site_key, json.dumps({"version": version, "at": now}))
            sent += 1
            log.warning(
                "registry: %s/%s still at %d, %.0f s after it was seen behind %d:"
                " snapshot %d published again",
                site,
                gate,
                have,
                now - float(record["since"]),
                version,
                version,
            )
    store.set_meta(key, json.dumps(record))
    return sent
