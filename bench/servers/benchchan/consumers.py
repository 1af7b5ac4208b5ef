"""The consumer: joins the group named in its URL and forwards every ``group_send``."""

from channels.generic.websocket import AsyncWebsocketConsumer


class GroupForwarder(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.group = self.scope["url_route"]["kwargs"]["group"]
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def bench_message(self, event: dict) -> None:
        await self.send(text_data=event["text"])
