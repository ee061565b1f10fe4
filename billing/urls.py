from django.urls import path

from billing import api

urlpatterns = [
    path("subscriptions/plans", api.PlanListApi.as_view(), name="subscription-plans"),
    path("subscriptions/start", api.SubscriptionStartApi.as_view(), name="subscription-start"),
    path("subscriptions/verify", api.SubscriptionVerifyApi.as_view(), name="subscription-verify"),
    path("subscriptions/history", api.SubscriptionHistoryApi.as_view(), name="subscription-history"),
    path("subscriptions/cancel", api.SubscriptionCancelApi.as_view(), name="subscription-cancel"),
    path("billing/webhook", api.BillingWebhookApi.as_view(), name="billing-webhook"),
]
