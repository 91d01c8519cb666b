"""Past one machine: firm-lite on Ray. ``firm-lite score --ray`` (Ray Data batch scoring,
:mod:`~firm_lite.cluster.batch`) and ``firm-lite serve --ray`` (the reward server behind Ray Serve
replicas, :mod:`~firm_lite.cluster.serving`); :mod:`~firm_lite.cluster.connect` finds the cluster.
``--shard``/``firm-lite merge``, which need no Ray, live in :mod:`firm_lite.shards` and
:mod:`firm_lite.merge`.

Needs the ``ray`` extra (``pip install "firm-lite[ray]"``); nothing here is imported by
``firm-lite --help`` or by a command run without ``--ray``.
"""
