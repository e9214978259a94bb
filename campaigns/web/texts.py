"""What the member pages and the bot say, per locale (``ru``, ``en``; others read ``en``).

Kept apart from the program's ``templates/`` (marketers' texts): these are loyalcast's
own words. Channel and category names fall back to the spec's label and the category's
own name.
"""

from __future__ import annotations

from channels.specs import channel_spec

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Messages from {program}",
        "hello": "Hello, {name}!",
        "intro": "Choose what we send you. Messages about your account itself (receipts, security) always arrive.",
        "this_header": "You opened this page from a message about “{category}” by {channel}.",
        "stop_this": "Stop “{category}” by {channel}",
        "stop_all": "Stop all of these messages",
        "save": "Save my choices",
        "resubscribe": "Resubscribe to “{category}” by {channel}",
        "done_this": "Done: you will no longer receive “{category}” by {channel}.",
        "done_all": "Done: we will send you none of these messages any more.",
        "done_save": "Your choices are saved.",
        "done_resubscribe": "Welcome back: you will receive “{category}” by {channel} again.",
        "table_caption": "What you receive",
        "category": "Messages",
        "no_channels": "We have no address of yours to write to.",
        "since": "changed {date}",
        "invalid_title": "This link does not work",
        "invalid_body": "It may be incomplete (check that the whole link was copied) or changed. Nothing was changed.",
        "gone_title": "This account no longer exists",
        "gone_body": "We have nothing to send to this link any more. Nothing was changed.",
        "bad_form_title": "This form could not be read",
        "bad_form_body": "Please go back and try again. Nothing was changed.",
        "bot_linked": "Done: {program} will write to you here. Send /stop to stop these messages.",
        "bot_stopped": "You will get no more messages from {program} here. Open your link again to come back.",
        "bot_bad_link": "This link does not work. Please open the Telegram link from your latest message from {program}.",
        "bot_hello": "Hello! To get messages from {program} here, open the Telegram link from one of our emails or texts.",
        "category.marketing": "offers and news",
        "category.expiry": "expiring points",
        "category.content": "articles and tips",
        "channel.email": "email",
    },
    "ru": {
        "title": "Рассылки {program}",
        "hello": "Здравствуйте, {name}!",
        "intro": "Выберите, что мы вам присылаем. Сообщения о самом счёте (чеки, безопасность) приходят всегда.",
        "this_header": "Вы открыли эту страницу из сообщения «{category}» ({channel}).",
        "stop_this": "Не присылать «{category}» ({channel})",
        "stop_all": "Отписаться от всех рассылок",
        "save": "Сохранить",
        "resubscribe": "Снова получать «{category}» ({channel})",
        "done_this": "Готово: «{category}» ({channel}) больше не придут.",
        "done_all": "Готово: мы больше не пришлём вам ни одной рассылки.",
        "done_save": "Ваш выбор сохранён.",
        "done_resubscribe": "С возвращением: «{category}» ({channel}) снова будут приходить.",
        "table_caption": "Что вы получаете",
        "category": "Сообщения",
        "no_channels": "У нас нет вашего адреса для сообщений.",
        "since": "изменено {date}",
        "invalid_title": "Ссылка не работает",
        "invalid_body": "Возможно, она скопирована не полностью или изменена. Ничего не изменилось.",
        "gone_title": "Этого аккаунта больше нет",
        "gone_body": "По этой ссылке нам больше некому писать. Ничего не изменилось.",
        "bad_form_title": "Форму не удалось прочитать",
        "bad_form_body": "Вернитесь назад и попробуйте ещё раз. Ничего не изменилось.",
        "bot_linked": "Готово: {program} будет писать вам здесь. Отправьте /stop, чтобы отписаться.",
        "bot_stopped": "{program} больше не будет писать вам здесь. Чтобы вернуться, снова откройте свою ссылку.",
        "bot_bad_link": "Ссылка не работает. Откройте ссылку на Telegram из последнего письма или SMS {program}.",
        "bot_hello": "Здравствуйте! Чтобы получать сообщения {program} здесь, откройте ссылку на Telegram из письма или SMS.",
        "category.marketing": "акции и новости",
        "category.expiry": "сгорание баллов",
        "category.content": "статьи и советы",
        "channel.email": "почта",
    },
}


class Words:
    """The texts of one locale."""

    def __init__(self, locale: str) -> None:
        self.locale = locale if locale in TEXTS else "en"
        self._texts = TEXTS[self.locale]

    def __call__(self, key: str, **values: str) -> str:
        return (self._texts.get(key) or TEXTS["en"][key]).format(**values)

    def category(self, name: str) -> str:
        return self._texts.get(f"category.{name}") or TEXTS["en"].get(f"category.{name}") or name

    def channel(self, name: str) -> str:
        return self._texts.get(f"channel.{name}") or channel_spec(name).label


def language(locale: str | None) -> str:
    """``ru_RU``, ``ru-RU`` or ``ru`` -> ``ru``."""
    return (locale or "").replace("-", "_").split("_")[0].lower()
