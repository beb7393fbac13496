"""Fixed vocabularies of the simulated bank: merchant categories, apps, user agents, ports, cloud calls.

Everything here is plain data; the world and the generators index into these tables with NumPy arrays.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

__all__ = [
    "CATEGORIES",
    "CLOUD_CALLS",
    "FX_PER_EUR",
    "ROLE_CALLS",
    "Category",
    "CloudCall",
    "DayProfile",
    "series",
]


def series(values: list[str] | tuple[str, ...]) -> pl.Series:
    """A Polars string series of a small vocabulary, to `gather` from with index arrays."""
    return pl.Series(list(values), dtype=pl.String)


@dataclass(frozen=True, slots=True)
class Category:
    """A kind of merchant: words, merchant category code, typical amount and how common it is."""

    name: str
    mcc: str
    amount_shift: float
    """Added to the customer's log median amount (so electronics cost more than coffee)."""
    pos_weight: float
    """Share among shops with a terminal (0: online only)."""
    online_weight: float
    """Share among online merchants (0: never online)."""


CATEGORIES: tuple[Category, ...] = (
    Category("grocery", "5411", 0.0, 28.0, 2.0),
    Category("restaurant", "5812", 0.1, 12.0, 0.0),
    Category("fast_food", "5814", -0.9, 11.0, 1.0),
    Category("fuel", "5541", 0.4, 9.0, 0.0),
    Category("pharmacy", "5912", -0.4, 5.0, 1.0),
    Category("clothing", "5651", 0.6, 6.0, 14.0),
    Category("electronics", "5732", 1.6, 2.0, 8.0),
    Category("department_store", "5311", 0.5, 4.0, 0.0),
    Category("transport", "4111", -1.2, 7.0, 3.0),
    Category("taxi", "4121", -0.2, 3.0, 4.0),
    Category("entertainment", "7832", -0.3, 3.5, 5.0),
    Category("hotel", "7011", 2.0, 1.5, 5.0),
    Category("travel_airline", "4511", 2.4, 0.0, 5.0),
    Category("digital_goods", "5818", -1.0, 0.0, 22.0),
    Category("marketplace", "5399", 0.3, 0.0, 30.0),
    Category("jewelry", "5944", 1.9, 0.3, 0.5),
    Category("atm", "6011", 1.2, 7.0, 0.0),
    Category("utilities", "4900", 1.3, 0.0, 3.0),
    Category("crypto_exchange", "6051", 1.5, 0.0, 0.6),
)

CATEGORY_INDEX: Mapping[str, int] = types.MappingProxyType({c.name: k for k, c in enumerate(CATEGORIES)})
CATEGORY_NAMES = series([c.name for c in CATEGORIES])
CATEGORY_MCC = series([c.mcc for c in CATEGORIES])
CATEGORY_SHIFT = np.array([c.amount_shift for c in CATEGORIES], dtype=np.float64)

FX_PER_EUR: Mapping[str, float] = types.MappingProxyType(
    {
        "EUR": 1.0, "GBP": 0.86, "USD": 1.08, "PLN": 4.3, "CHF": 0.97, "SEK": 11.5, "NOK": 11.6,
        "DKK": 7.46, "CZK": 25.0, "HUF": 390.0, "RON": 5.0, "JPY": 165.0, "CNY": 7.8, "INR": 90.0,
        "AUD": 1.65, "CAD": 1.47, "BRL": 5.4, "MXN": 18.5, "TRY": 35.0, "AED": 4.0, "THB": 39.0,
        "ZAR": 20.0, "RUB": 100.0, "SGD": 1.45, "HKD": 8.4, "KRW": 1450.0, "IDR": 17_000.0,
        "NGN": 1600.0, "EGP": 52.0, "MAD": 10.8, "UAH": 43.0, "ILS": 4.0, "PHP": 62.0, "VND": 27_000.0,
    }
)  # fmt: skip
"""Rough units of each currency per euro: illustrative only, to keep amounts plausible abroad."""

# Online banking: which app a device kind uses, and what it says about itself.
DEVICE_KINDS = ("phone", "laptop", "tablet")
DEVICE_APP = series(["mobile_banking", "online_banking", "mobile_banking"])
DEVICE_AUTH_METHOD = series(["biometric", "password", "biometric"])
DEVICE_USER_AGENTS: tuple[tuple[str, ...], ...] = (
    (
        "FinSecureBank/8.4.1 (iPhone; iOS 17.4.1)",
        "FinSecureBank/8.4.1 (Android 14; Pixel 8)",
        "FinSecureBank/8.3.0 (Android 13; SM-S911B)",
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4 Safari/605.1.15",
        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    ),
    ("FinSecureBank/8.4.1 (iPad; iPadOS 17.4)", "FinSecureBank/8.4.0 (Android 14; SM-X710)"),
)
USER_AGENTS = series([ua for group in DEVICE_USER_AGENTS for ua in group])
USER_AGENT_START = np.cumsum([0] + [len(g) for g in DEVICE_USER_AGENTS])[:-1].astype(np.int64)
USER_AGENT_COUNT = np.array([len(g) for g in DEVICE_USER_AGENTS], dtype=np.int64)
SSH_CLIENT = "SSH-2.0-OpenSSH_9.6p1"
WORKSTATION_USER_AGENT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Edg/124.0 FinSecureSSO/3.2"

SCRIPTED_USER_AGENTS = (
    "python-requests/2.31.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/109.0 Safari/537.36",
    "okhttp/4.9.3",
)

DECLINE_REASONS = series(
    ["insufficient_funds", "do_not_honor", "expired_card", "incorrect_pin", "invalid_cvv"]
)
POS_ENTRY_MODES = series(["contactless", "chip", "wallet_token", "magstripe"])
POS_ENTRY_WEIGHTS = np.array([0.55, 0.33, 0.105, 0.015])
ONLINE_ENTRY_MODES = series(["manual", "wallet_token", "credential_on_file"])
ONLINE_ENTRY_WEIGHTS = np.array([0.45, 0.3, 0.25])


@dataclass(frozen=True, slots=True)
class CloudCall:
    """One kind of CloudTrail record an engineer or a service role makes."""

    service: str
    action: str
    read_only: bool
    weight: float
    resource: str
    """What it touches: ``bucket``, ``object``, ``instance``, ``key``, ``role``, ``function``, ``table``,
    ``user`` (the caller itself) or ``none``."""


CLOUD_CALLS: tuple[CloudCall, ...] = (
    CloudCall("s3.amazonaws.com", "GetObject", True, 22.0, "object"),
    CloudCall("s3.amazonaws.com", "PutObject", False, 6.0, "object"),
    CloudCall("s3.amazonaws.com", "ListObjects", True, 6.0, "bucket"),
    CloudCall("s3.amazonaws.com", "ListBuckets", True, 2.0, "none"),
    CloudCall("ec2.amazonaws.com", "DescribeInstances", True, 9.0, "none"),
    CloudCall("ec2.amazonaws.com", "DescribeSecurityGroups", True, 3.0, "none"),
    CloudCall("ec2.amazonaws.com", "StartInstances", False, 0.5, "instance"),
    CloudCall("iam.amazonaws.com", "GetUser", True, 2.0, "user"),
    CloudCall("iam.amazonaws.com", "ListRoles", True, 1.5, "none"),
    CloudCall("iam.amazonaws.com", "ListUsers", True, 0.5, "none"),
    CloudCall("iam.amazonaws.com", "ListAccessKeys", True, 0.3, "user"),
    CloudCall("iam.amazonaws.com", "CreateAccessKey", False, 0.04, "user"),
    CloudCall("iam.amazonaws.com", "DeleteAccessKey", False, 0.04, "user"),
    CloudCall("sts.amazonaws.com", "GetCallerIdentity", True, 4.0, "none"),
    CloudCall("sts.amazonaws.com", "AssumeRole", True, 5.0, "role"),
    CloudCall("kms.amazonaws.com", "Decrypt", True, 8.0, "key"),
    CloudCall("lambda.amazonaws.com", "Invoke", False, 3.0, "function"),
    CloudCall("logs.amazonaws.com", "FilterLogEvents", True, 4.0, "none"),
    CloudCall("dynamodb.amazonaws.com", "Query", True, 4.0, "table"),
    CloudCall("monitoring.amazonaws.com", "GetMetricData", True, 4.0, "none"),
)

ROLE_CALLS: tuple[CloudCall, ...] = (
    CloudCall("s3.amazonaws.com", "GetObject", True, 30.0, "object"),
    CloudCall("s3.amazonaws.com", "PutObject", False, 20.0, "object"),
    CloudCall("kms.amazonaws.com", "Decrypt", True, 20.0, "key"),
    CloudCall("kms.amazonaws.com", "GenerateDataKey", True, 8.0, "key"),
    CloudCall("sts.amazonaws.com", "AssumeRole", True, 10.0, "role"),
    CloudCall("dynamodb.amazonaws.com", "Query", True, 12.0, "table"),
    CloudCall("lambda.amazonaws.com", "Invoke", False, 5.0, "function"),
)

CLOUD_USER_AGENTS = series(
    [
        "console.amazonaws.com",
        "aws-cli/2.15.30 Python/3.11.8 Linux/6.5.0-1016-aws exe/x86_64.ubuntu.22",
        "Boto3/1.34.84 md/Botocore#1.34.84 ua/2.0 os/linux#5.10.213 md/arch#x86_64 lang/python#3.11.8",
        "APN/1.0 HashiCorp/1.0 Terraform/1.7.5 (+https://www.terraform.io)",
    ]
)
ROLE_USER_AGENT = "Boto3/1.34.84 md/Botocore#1.34.84 ua/2.0 os/linux#5.10.213 exec-env/AWS_Lambda_python3.11"
BUCKETS = (
    "fsn-prod-statements",
    "fsn-prod-customer-exports",
    "fsn-data-lake-raw",
    "fsn-dev-artifacts",
    "fsn-logs-archive",
)
SENSITIVE_BUCKETS = ("fsn-prod-customer-exports", "fsn-prod-statements", "fsn-data-lake-raw")
SERVICE_ROLES = (
    "statement-renderer",
    "fraud-scoring",
    "payments-api",
    "ledger-sync",
    "report-builder",
    "log-shipper",
    "backup-agent",
    "kyc-checker",
)

# Internal hosts: kind, listening (port, protocol, Zeek service) and how many per 100 employees.
HOST_KINDS = ("dc", "file", "web", "api", "db", "bastion", "mail", "backup", "app")
HOST_PER_100_EMPLOYEES = np.array([0.6, 0.8, 1.0, 1.5, 1.0, 0.0, 0.3, 0.3, 4.0])
HOST_MINIMUM = np.array([2, 2, 2, 2, 2, 1, 1, 1, 4], dtype=np.int64)

# Ports an internet scanner probes, most probed first.
SCAN_PORTS = np.array(
    [22, 23, 80, 443, 445, 3389, 8080, 8443, 21, 25, 53, 110, 111, 135, 139, 143, 993, 995, 1433, 1723, 3306,
     5432, 5900, 6379, 8000, 8888, 9200, 27017, 5985, 11211],
    dtype=np.int32,
)  # fmt: skip
CONN_STATES = series(["SF", "S0", "REJ", "RSTO", "RSTR", "SH", "S1", "OTH"])


@dataclass(frozen=True, slots=True)
class DayProfile:
    """Relative activity by local hour and weekday, scaled so that its weekly mean is 1."""

    hourly: npt.NDArray[np.float64]
    weekday: npt.NDArray[np.float64]

    @staticmethod
    def of(hourly: list[float], weekday: list[float]) -> DayProfile:
        """Normalise 24 hourly and 7 daily (Monday first) relative weights."""
        hours = np.asarray(hourly, dtype=np.float64)
        days = np.asarray(weekday, dtype=np.float64)
        return DayProfile(hours / hours.mean(), days / days.mean())

    @property
    def peak(self) -> float:
        """The highest weight (the thinning bound)."""
        return float(self.hourly.max() * self.weekday.max())

    def weight(self, local_s: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """Weight at local solar times given as seconds since the epoch."""
        days = local_s // 86_400
        hours = (local_s // 3_600) % 24
        return np.asarray(self.hourly[hours] * self.weekday[(days + 3) % 7], dtype=np.float64)


# Shoppers: quiet at night, peaks at lunch and after work; a little more on Saturdays.
SHOPPING = DayProfile.of(
    [0.15, 0.08, 0.05, 0.04, 0.05, 0.12, 0.35, 0.7, 1.0, 1.2, 1.4, 1.7,
     2.0, 1.8, 1.5, 1.5, 1.7, 2.0, 2.1, 1.8, 1.4, 1.0, 0.6, 0.3],
    [1.0, 1.0, 1.0, 1.05, 1.2, 1.3, 0.75],
)  # fmt: skip
# Online banking: morning and evening peaks, steady at weekends.
BANKING = DayProfile.of(
    [0.2, 0.1, 0.06, 0.05, 0.06, 0.15, 0.5, 1.2, 1.6, 1.4, 1.2, 1.2,
     1.4, 1.2, 1.1, 1.1, 1.2, 1.5, 1.8, 2.0, 1.9, 1.5, 0.9, 0.4],
    [1.1, 1.0, 1.0, 1.0, 1.05, 0.9, 0.85],
)  # fmt: skip
# Office work: business hours on weekdays.
OFFICE = DayProfile.of(
    [0.02, 0.02, 0.02, 0.02, 0.02, 0.03, 0.1, 0.5, 1.6, 2.0, 2.0, 1.9,
     1.3, 1.8, 2.0, 1.9, 1.7, 1.1, 0.5, 0.25, 0.15, 0.1, 0.05, 0.03],
    [1.0, 1.0, 1.0, 1.0, 0.95, 0.06, 0.04],
)  # fmt: skip
# Machines: near flat, a little busier by day.
MACHINE = DayProfile.of(
    [0.7, 0.7, 0.8, 0.8, 0.7, 0.7, 0.8, 0.9, 1.1, 1.2, 1.2, 1.2,
     1.2, 1.2, 1.2, 1.2, 1.2, 1.2, 1.1, 1.0, 0.9, 0.8, 0.8, 0.7],
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.9, 0.9],
)  # fmt: skip
