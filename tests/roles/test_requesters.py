"""Who asks a role, and where the answer goes (issue 19, findings 2, 3 and 4), from a second
client holding a terminal's own credentials, against a real Mosquitto with the generated ACL.

- A response topic with a wildcard is refused like any bad field; a job that printed is never
  printed again because its answer could not be sent (it printed 38 times, and blocked the queue).
- Answers go only into the requesting terminal's own tree: pos-1 cannot make the hub publish on
  pos-2's topics, nor send a command as pos-2.
- A payment belongs to the terminal that started it: another till learns nothing of it and
  cannot settle it; an installer can, through the API.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgehub.bus.session import MqttSession
from edgehub.roles.roles import Reply
from edgehub.sim.pinpad import ZvtPinpadSim
from edgehub.sim.printer import PrinterSim
from tests.conftest import API_TOKEN
from tests.roles.conftest import Store, Till, copies, pinpad_info, printer_info, ticket

PRINTER = "receipt-printer"
TILL = "pinpad.till-1"


def pay(payment_id: str, sale_id: str, cents: int) -> dict[str, Any]:
    return {"schema": "pay/1", "payment_id": payment_id, "sale_id": sale_id, "amount_cents": cents}


async def listen(config: Any, terminal: str, topics: list[str]) -> tuple[MqttSession, list[tuple[str, bytes]]]:
    """A terminal's session that notes every message on ``topics`` (its own callback)."""
    seen: list[tuple[str, bytes]] = []
    client = MqttSession(config.broker.listen.host, config.broker.listen.port, username=terminal,
                         password=f"pw-{terminal}", client_id=f"spy-{terminal}",
                         on_message=lambda message: seen.append((message.topic, message.payload)))
    await client.__aenter__()
    for topic in topics:
        await client.subscribe(topic, qos=1)
    return client, seen


async def close(client: MqttSession) -> None:
    await client.close()


async def publish_v5(client: MqttSession, topic: str, doc: dict[str, Any], response_topic: str) -> None:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = response_topic
    props.CorrelationData = b"c"
    await client.publish(topic, json.dumps(doc).encode(), qos=1, properties=props)


async def test_a_wildcard_response_topic_is_refused_and_the_printer_prints_once(store: Store) -> None:
    root = store.topics.root
    async with PrinterSim() as sim, Till(store.config, "pos-2") as other:
        await store.add(printer_info("prn-c", sim))
        await store.wait_for(lambda: store.roles.serving(PRINTER) == "prn-c")
        attacker, seen = await listen(store.config, "pos-1", [f"{root}/pos/pos-1/#"])
        try:
            # The attack as found: a print job whose answers should go to every till's ack topic.
            await publish_v5(attacker, store.topics.role_command(PRINTER, "print", "pos-1"),
                             {"schema": "print/1", "job_id": "evil-1", "ticket": ticket(1)}, f"{root}/pos/+/ack")
            await store.wait_for(lambda: any(t.endswith("/pos-1/reply") for t, _ in seen), what="a refusal")
            refusal = json.loads(next(p for t, p in seen if t.endswith("/pos-1/reply")))
            assert refusal["schema"] == "error/1" and "must not contain the wildcards" in refusal["error"], refusal
            # The next job of another till prints at once, and the refused one never did.
            await other.request(PRINTER, "print", {"schema": "print/1", "job_id": "ok-2", "ticket": ticket(2)})
            await other.reply("job_id", "ok-2", "printed")
            await asyncio.sleep(0.5)
            assert [n for n, _ in copies(sim)] == [2]
        finally:
            await close(attacker)


async def test_a_job_whose_answer_cannot_be_sent_prints_once_and_the_queue_goes_on(store: Store) -> None:
    """A job journaled with an answer topic the broker refuses (a wildcard kept by an older hub):
    printed once, the answer dropped with a log line, the next job printed."""
    async with PrinterSim() as sim:
        await store.add(printer_info("prn-c", sim))
        await store.wait_for(lambda: store.roles.serving(PRINTER) == "prn-c")
        queue = store.roles.printqueue
        await queue.submit(PRINTER, ticket(1), "w-1", Reply(f"{store.topics.root}/pos/+/ack", b"c", None))
        await queue.submit(PRINTER, ticket(2), "w-2", Reply(None, None, None))
        await store.wait_for(lambda: len(copies(sim)) >= 2, what="both jobs printed")
        await asyncio.sleep(1.0)  # the retry loop reprinted job 1 every second
        assert copies(sim) == [(1, False), (2, False)]
        assert queue.stats.retries == 0


async def test_answers_go_only_into_the_requesters_own_tree(store: Store) -> None:
    root = store.topics.root
    async with PrinterSim() as sim:
        await store.add(printer_info("prn-c", sim))
        await store.wait_for(lambda: store.roles.serving(PRINTER) == "prn-c")
        victim, victim_saw = await listen(store.config, "pos-2", [f"{root}/pos/pos-2/#"])
        attacker, attacker_saw = await listen(store.config, "pos-1", [f"{root}/pos/pos-1/#"])
        try:
            # Steering the answer into pos-2's ack and order topics: refused, told to pos-1.
            for n, target in enumerate((f"{root}/pos/pos-2/ack", f"{root}/pos/pos-2/order")):
                await publish_v5(attacker, store.topics.role_command(PRINTER, "print", "pos-1"),
                                 {"schema": "print/1", "job_id": f"steer-{n}", "ticket": ticket(n)}, target)
            # Speaking as pos-2: the broker's ACL drops it, the hub never hears it.
            await attacker.publish(store.topics.role_command(PRINTER, "print", "pos-2"),
                                   json.dumps({"schema": "print/1", "job_id": "as-pos-2", "ticket": ticket(9),
                                               "reply_to": f"{root}/pos/pos-2/ack"}).encode(), qos=1)
            # The old, unsigned command topic: refused by the broker too.
            unsigned = {"schema": "print/1", "job_id": "unsigned", "ticket": ticket(8)}
            await attacker.publish(f"{root}/role/{PRINTER}/cmd/print", json.dumps(unsigned).encode(), qos=1)
            await store.wait_for(lambda: sum(t.endswith("/pos-1/reply") for t, _ in attacker_saw) >= 2)
            await asyncio.sleep(0.5)
            assert victim_saw == []
            errors = [json.loads(p)["error"] for t, p in attacker_saw if t.endswith("/pos-1/reply")]
            assert all("must be a topic under edgehub/v1/s1/pos/pos-1/" in e for e in errors), errors
            assert copies(sim) == []
        finally:
            await close(attacker)
            await close(victim)


async def test_an_order_cannot_be_acked_into_another_tills_tree(store: Store) -> None:
    """Orders take the same rule (the intake is not running here: the hub test covers the ack)."""
    from edgehub.bus.payloads import reply_topic_problem

    own = store.topics.own_tree("pos-1")
    assert reply_topic_problem(f"{own}ack", own) is None
    assert reply_topic_problem(f"{store.topics.root}/pos/pos-2/ack", own)
    assert reply_topic_problem(f"{own}a/+", own) and reply_topic_problem(f"{own}a\x00", own)
    assert reply_topic_problem(f"{own}a\nb", own) and reply_topic_problem(own, own)


async def test_one_till_cannot_read_or_settle_another_tills_payment(store: Store) -> None:
    async with ZvtPinpadSim() as pad, Till(store.config, "pos-2") as owner, Till(store.config, "pos-1") as other:
        await store.add(pinpad_info("pad-1", pad))
        await store.wait_for(lambda: store.roles.serving(TILL) == "pad-1")
        await owner.request(TILL, "pay", pay("p2-1", "sale-9", 4200))
        approved = await owner.reply("payment_id", "p2-1", "approved")
        assert approved["masked_pan"] and approved["receipt_no"] is not None
        # pos-1 sends pos-2's payment_id again, and asks to settle it.
        await other.request(TILL, "pay", pay("p2-1", "sale-9", 4200))
        refused = await other.reply("payment_id", "p2-1", "refused")
        await other.request(TILL, "settle", {"schema": "settle/1", "payment_id": "p2-1", "decision": "void"})
        await store.wait_for(lambda: len(other.replies_for("payment_id", "p2-1")) >= 2)
        for doc in other.replies_for("payment_id", "p2-1"):
            assert doc["status"] == "refused" and "not this terminal's" in doc["error"], doc
            assert not {"masked_pan", "receipt_no", "sale_id", "amount_cents", "device"} & set(doc), doc
        assert refused["status"] == "refused"
        assert len(pad.charges) == 1
        # The owner still hears its own payment; the installer sees it through the API.
        await owner.request(TILL, "pay", pay("p2-1", "sale-9", 4200))
        await store.wait_for(lambda: any(d.get("duplicate") for d in owner.replies_for("payment_id", "p2-1")))
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_TOKEN}"}) as http:
            async with http.get(f"http://127.0.0.1:{store.api.port}/api/v1/payments/p2-1") as response:
                assert response.status == 200
                doc = await response.json()
            assert doc["terminal"] == "pos-2" and doc["state"] == "approved" and doc["amount_cents"] == 4200
            async with http.post(f"http://127.0.0.1:{store.api.port}/api/v1/payments/p2-1/settle",
                                 json={"decision": "void"}) as response:
                assert response.status == 409  # approved already: only an unknown outcome is settled


async def test_a_kitchen_screen_may_print_but_never_pay(store: Store) -> None:
    """Its ACL has no pay line, and the hub refuses a pay that names a kds terminal."""
    from edgehub.broker import acl_text
    from edgehub.config import load_config
    from tests.conftest import write_config

    config = load_config(write_config(store.config.source.parent.parent / "kds-box",
                                      terminals=("pos-1", "kds-grill")))
    acl = acl_text(config)
    kds = acl.split("user kds-grill\n")[1].split("\n\n")[0]
    assert "/cmd/print/kds-grill" in kds and "/cmd/pay/" not in kds and "/cmd/settle/" not in kds
    pos = acl.split("user pos-1\n")[1].split("\n\n")[0]
    assert "role/+/cmd/pay/pos-1" in pos and "role/+/cmd/settle/pos-1" in pos
