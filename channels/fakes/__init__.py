"""Fake providers speaking the real protocols on loopback, for tests and for trying real
transports locally (``loyalcast fakes``): an SMTP server (aiosmtpd), an SMS gateway
(the generic JSON style, Twilio, SMS.ru, SMSC.ru and SMS Aero, each at its own path)
a Telegram Bot API server, Infobip's Viber Business Messages API and Meta's WhatsApp
Business Cloud API.

Each records what it accepted and can be told to fail (``Faults``): a share of
transient failures, "slow down" answers with a wait, answers slower than any timeout,
rejected recipients, blocked chats, and each provider's own error bodies. Failures are
drawn from a seeded generator, so a test sees the same sequence every run.

One module per fake: ``base`` (what they share), ``smtp``, ``telegram``, ``sms`` (the
gateway and its JSON and Twilio protocols) and one per Russian gateway's protocol
(``smsru``, ``smsc``, ``smsaero``), ``infobip`` (Viber) and ``whatsapp``.
"""

from channels.fakes.base import Faults, HttpFake
from channels.fakes.infobip import FakeInfobip
from channels.fakes.sms import FakeSmsGateway
from channels.fakes.smtp import FakeSmtpServer
from channels.fakes.telegram import FakeTelegramApi
from channels.fakes.whatsapp import FakeWhatsApp

__all__ = ["FakeInfobip", "FakeSmsGateway", "FakeSmtpServer", "FakeTelegramApi", "FakeWhatsApp", "Faults", "HttpFake"]
