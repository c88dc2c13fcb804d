"""The dev broker: a RocketMQ name server and broker on one port."""

__all__: list[str] = []
