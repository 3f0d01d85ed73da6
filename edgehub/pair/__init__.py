"""Two boxes, one store: a standby that holds every acked change and takes over the store's
floating address when the serving box dies (docs/pair.md).

``PairNode`` (node.py) is what ``edgehub run`` runs for a box with ``[pair]``; the rest is its
parts: records (record.py) shipped by the serving box's journal hook (primary.py) to the
standby's follower (standby.py) over an authenticated link (wire.py, link.py); keepalived for
the floating address (vrrp.py); the epoch, the copies state and the salvage in the serving hub
(service.py, salvage.py); the pair's own tables (tables.py).

Import ``edgehub.pair.node`` for the node: this package's own face stays free of the hub, so
the hub's parts (the uplink reads ``tables``) may import from it.
"""
