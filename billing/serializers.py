"""Input and output shapes of the billing API."""

from __future__ import annotations

from rest_framework import serializers

from algoterm.api.serializers import InputSerializer

from .models import Payment, Plan, Subscription, WebhookOutcome


class PlanOutput(serializers.ModelSerializer):
    price = serializers.SerializerMethodField(help_text="rupees")

    class Meta:
        model = Plan
        fields = [
            "code",
            "name",
            "description",
            "price_paise",
            "price",
            "period",
            "interval",
            "trial_days",
            "is_trial",
            "max_broker_accounts",
            "max_running_strategies",
            "max_active_backtests",
            "live_trading",
            "api_requests_per_minute",
            "websocket_symbols",
        ]
        read_only_fields = fields

    def get_price(self, plan: Plan) -> float:
        return plan.price_paise / 100


class PaymentOutput(serializers.ModelSerializer):
    subscription_id = serializers.CharField()

    class Meta:
        model = Payment
        fields = [
            "id",
            "subscription_id",
            "razorpay_payment_id",
            "amount_paise",
            "currency",
            "status",
            "method",
            "error_description",
            "paid_at",
        ]
        read_only_fields = fields


class CurrentSubscriptionOutput(serializers.ModelSerializer):
    plan = serializers.CharField(source="plan.code")

    class Meta:
        model = Subscription
        fields = [
            "id",
            "plan",
            "status",
            "razorpay_subscription_id",
            "current_start",
            "current_end",
            "paid_count",
            "cancel_at_cycle_end",
            "ended_at",
            "created_at",
        ]
        read_only_fields = fields


class SubscriptionOutput(CurrentSubscriptionOutput):
    payments = PaymentOutput(many=True)

    class Meta(CurrentSubscriptionOutput.Meta):
        fields = [*CurrentSubscriptionOutput.Meta.fields, "payments"]
        read_only_fields = fields


class EntitlementsOutput(serializers.Serializer):
    plan = serializers.CharField(help_text="the plan's code; empty when none applies")
    basis = serializers.ChoiceField(
        choices=["subscription", "trial", "lapsed", "operator"],
        help_text="subscription; trial (never subscribed: the trial's limits); lapsed (every subscription ended: no "
        "live trading, no running strategies); operator (admins: no limits)",
    )
    max_broker_accounts = serializers.IntegerField(allow_null=True, help_text="null: no limit")
    max_running_strategies = serializers.IntegerField(allow_null=True)
    max_active_backtests = serializers.IntegerField(allow_null=True, help_text="backtests queued or running at once")
    live_trading = serializers.BooleanField()
    api_requests_per_minute = serializers.IntegerField(allow_null=True)
    websocket_symbols = serializers.IntegerField(allow_null=True)


class SubscriptionStartInput(InputSerializer):
    plan = serializers.SlugField(max_length=20, help_text="trial, monthly or yearly (GET /api/subscriptions/plans)")


class CheckoutOutput(serializers.Serializer):
    key = serializers.CharField(help_text="Razorpay key id for Checkout")
    subscription_id = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    prefill = serializers.DictField()
    notes = serializers.DictField()


class SubscriptionStartOutput(serializers.Serializer):
    subscription = CurrentSubscriptionOutput()
    checkout = CheckoutOutput(allow_null=True, help_text="open Razorpay Checkout with these; null for the trial")


class VerifyInput(InputSerializer):
    razorpay_payment_id = serializers.CharField(max_length=40)
    razorpay_subscription_id = serializers.CharField(max_length=40)
    razorpay_signature = serializers.CharField(max_length=128)


class WebhookOutput(serializers.Serializer):
    event_id = serializers.CharField()
    outcome = serializers.ChoiceField(choices=WebhookOutcome.choices)
