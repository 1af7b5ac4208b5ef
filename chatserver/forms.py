"""Forms of the user and group chats (ws4redis's field names: ``user``/``group``, ``message``)."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

MAX_MESSAGE_LENGTH = 1000


class UserMessageForm(forms.Form):
    """A message to one user, chosen by user name."""

    user = forms.ModelChoiceField(
        queryset=get_user_model().objects.filter(is_active=True).order_by("username"),
        to_field_name="username",
        empty_label=None,
    )
    message = forms.CharField(max_length=MAX_MESSAGE_LENGTH, strip=True)


class GroupMessageForm(forms.Form):
    """A message to the members of one group, chosen by group name."""

    group = forms.ModelChoiceField(
        queryset=Group.objects.order_by("name"), to_field_name="name", empty_label=None
    )
    message = forms.CharField(max_length=MAX_MESSAGE_LENGTH, strip=True)
