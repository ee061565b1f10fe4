"""Input and output shapes of the brokers API. Credentials go in; they never come out."""

from __future__ import annotations

from rest_framework import serializers

from algoterm.api.serializers import InputSerializer
from brokers.models import AccountStatus, Broker, BrokerAccount
from brokers.services import masked_proxy


class BrokerAccountOutput(serializers.ModelSerializer):
    proxy = serializers.SerializerMethodField(help_text="egress proxy, without its password")
    algo_id = serializers.CharField(read_only=True, help_text="exchange algo id on every order; operators set it")
    session_renewal_consented_at = serializers.DateTimeField(
        read_only=True,
        allow_null=True,
        help_text="when you agreed that the session is renewed before the daily cut-off without a login (Dhan, "
        "Fyers); null: you log in every day",
    )
    market_data_source = serializers.SerializerMethodField(
        help_text="an operator chose this account to feed the platform's market data"
    )

    class Meta:
        model = BrokerAccount
        fields = [
            "id",
            "broker",
            "label",
            "client_id",
            "status",
            "session_expires_at",
            "last_error",
            "proxy",
            "algo_id",
            "created_at",
            "connected_at",
            "session_renewal_consented_at",
            "market_data_source",
        ]
        read_only_fields = fields

    def get_market_data_source(self, account: BrokerAccount) -> bool:
        return account.market_data_priority is not None

    def get_proxy(self, account: BrokerAccount) -> str:
        return masked_proxy(account.proxy_url)


class ConnectInput(InputSerializer):
    broker = serializers.ChoiceField(choices=Broker.choices)
    label = serializers.CharField(max_length=60, required=False, allow_blank=True, default="")
    credentials = serializers.DictField(
        required=False,
        default=dict,
        help_text="zerodha: api_key, api_secret; fyers: client_id, secret_key; dhan: client_id, access_token; "
        "paper: optional opening_balance",
    )
    proxy_url = serializers.CharField(
        max_length=300,
        required=False,
        allow_blank=True,
        default="",
        help_text="http(s) egress proxy on a public address (loopback, private, link-local, multicast and cloud "
        "metadata addresses are refused)",
    )


class ReloginInput(InputSerializer):
    credentials = serializers.DictField(required=False, default=dict, help_text="dhan: the new access_token")


class ConnectOutput(serializers.Serializer):
    account = BrokerAccountOutput()
    login_url = serializers.CharField(allow_null=True, help_text="open it to log in at the broker (OAuth brokers)")


class AccountListQuery(InputSerializer):
    broker = serializers.ChoiceField(choices=Broker.choices, required=False)
    status = serializers.ChoiceField(choices=AccountStatus.choices, required=False)
    page = serializers.IntegerField(required=False)
    page_size = serializers.IntegerField(required=False)


class FundsOutput(serializers.Serializer):
    available_cash = serializers.DecimalField(max_digits=16, decimal_places=2)
    used_margin = serializers.DecimalField(max_digits=16, decimal_places=2)
    opening_balance = serializers.DecimalField(max_digits=16, decimal_places=2)


class SessionRenewalInput(InputSerializer):
    enabled = serializers.BooleanField(help_text="true: renew my session before the daily cut-off; false: stop")
    pin = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=6,
        write_only=True,
        help_text="Fyers: your 4-digit PIN, which the renewal needs (kept encrypted; never returned)",
    )
