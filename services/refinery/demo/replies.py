"""The right one-sentence reply to each kind of demo ticket: the free-text task's ground truth.

Every ticket pattern of the triage corpus (``corpus._PATTERNS``) names an *issue*; each
issue has one reference reply, written in a few phrasings. The first phrasing is the
reference the corpus trains and tests on; users' corrections pick any of them, so the
feedback the retrainer learns from varies a little, as people's wording does. Replies
depend on the product line as well as the issue (a retail return is not a smart-home
return), so the shift to ``smart_home`` needs replies the first champion never saw. The
set stays small (a few dozen references, one short vocabulary) so the tiny offline model
can learn it.
"""

from __future__ import annotations

# Issue -> its reply in a few phrasings; the first is the reference.
_REPLIES: dict[str, tuple[str, ...]] = {
    # retail
    "retail.refund_charge": (
        "We have refunded the extra charge to your card.",
        "We refunded the extra charge to your card.",
        "The extra charge has been refunded to your card.",
    ),
    "retail.explain_charge": (
        "I have emailed you a breakdown of every charge on your bill.",
        "I emailed you a breakdown of every charge on your bill.",
        "We have emailed you a breakdown of the charges on your bill.",
    ),
    "retail.promo": (
        "I applied the promo code and sent the difference back.",
        "I have applied the promo code and sent back the difference.",
        "The promo code is applied and the difference is sent back.",
    ),
    "retail.receipt": (
        "A copy of the receipt is in your inbox now.",
        "A copy of your receipt is in your inbox now.",
        "The receipt copy is now in your inbox.",
    ),
    "retail.tracking": (
        "Your parcel is on its way and should arrive in two days.",
        "Your parcel is on the way and should arrive within two days.",
        "The parcel is on its way and will arrive in two days.",
    ),
    "retail.lost_parcel": (
        "We opened a claim with the courier and will ship a new one.",
        "We have opened a claim with the courier and will ship another one.",
        "A claim with the courier is open and a new one will ship.",
    ),
    "retail.address": (
        "You can change the delivery address under your orders.",
        "You can change the delivery address in your orders.",
        "Change the delivery address under your orders page.",
    ),
    "retail.login": (
        "I have sent you a new link to reset your password.",
        "I sent you a new link to reset your password.",
        "We have sent you a new link to reset your password.",
    ),
    "retail.profile": (
        "You can update your details on the profile page.",
        "You can update these details on your profile page.",
        "Update your details on the profile page.",
    ),
    "retail.delete": (
        "We will delete your account and data within seven days.",
        "Your account and data will be deleted within seven days.",
        "We delete your account and all data within seven days.",
    ),
    "retail.hacked": (
        "We have locked your account to keep it safe.",
        "We locked your account to keep it safe.",
        "Your account is locked now to keep it safe.",
    ),
    "retail.site_bug": (
        "Please clear your browser cache and try again.",
        "Please clear the browser cache and try once more.",
        "Clear your browser cache and try again please.",
    ),
    "retail.dead_item": (
        "Please charge it for an hour and hold the power button.",
        "Charge it for an hour, then hold the power button.",
        "Please charge it for one hour and hold the power button.",
    ),
    "retail.return": (
        "You can return it within 30 days and we will refund you.",
        "You can send it back within 30 days and we will refund you.",
        "Return it within 30 days and we will refund you.",
    ),
    "retail.replace": (
        "We will send you a replacement at no cost.",
        "We will send a replacement to you at no cost.",
        "A replacement is on its way to you at no cost.",
    ),
    "retail.refund_wait": (
        "Your refund will reach your card within five days.",
        "The refund will reach your card within five days.",
        "Your refund reaches your card in five days.",
    ),
    # smart_home
    "smart_home.cancel_plan": (
        "I have cancelled the subscription and refunded the last payment.",
        "I cancelled the subscription and refunded the last payment.",
        "The subscription is cancelled and the last payment refunded.",
    ),
    "smart_home.plan_price": (
        "The plan prices are listed in the app under billing.",
        "Plan prices are listed in the app under billing.",
        "You will find the plan prices in the app under billing.",
    ),
    "smart_home.preorder": (
        "Your device ships this week with a tracking number by email.",
        "The device ships this week and the tracking number comes by email.",
        "Your device ships this week, tracking number by email.",
    ),
    "smart_home.kit": (
        "We are sending the missing installer kit today.",
        "We send the missing installer kit today.",
        "The missing installer kit goes out today.",
    ),
    "smart_home.share": (
        "Invite them from the household settings in the app.",
        "Send the invite from the household settings in the app.",
        "Invite them in the app under household settings.",
    ),
    "smart_home.sign_in": (
        "Update the home app and sign in again.",
        "Please update the home app and sign in again.",
        "Update the home app, then sign in again.",
    ),
    "smart_home.move": (
        "Remove the home in settings, then invite the new owner.",
        "Remove the home in settings and invite the new owner.",
        "Delete the home in settings, then invite the new owner.",
    ),
    "smart_home.connect": (
        "Restart the hub and reconnect it to your Wi-Fi.",
        "Restart your hub and reconnect it to the Wi-Fi.",
        "Reboot the hub and reconnect it to your Wi-Fi.",
    ),
    "smart_home.reset": (
        "Hold the reset button for ten seconds, then update the firmware.",
        "Hold the reset button ten seconds and update the firmware.",
        "Press the reset button for ten seconds, then update the firmware.",
    ),
    "smart_home.calibrate": (
        "Calibrate the sensor from the device page in the app.",
        "Calibrate the sensor on the device page in the app.",
        "Open the device page in the app and calibrate the sensor.",
    ),
    "smart_home.lag": (
        "Move the camera closer to your router for a faster stream.",
        "Move the camera nearer your router for a faster stream.",
        "Put the camera closer to the router for a faster stream.",
    ),
    "smart_home.automation": (
        "Open the automation in the app and save it again.",
        "Open the automation in the app and save it once more.",
        "Open the automation in the app and save it.",
    ),
    "smart_home.battery": (
        "Turn off motion alerts to make the battery last longer.",
        "Switch off motion alerts so the battery lasts longer.",
        "Turn motion alerts off to make the battery last longer.",
    ),
    "smart_home.return": (
        "You can return the device within 60 days in its original box.",
        "Return the device within 60 days in its original box.",
        "The device can go back within 60 days in its original box.",
    ),
    "smart_home.doa": (
        "We will ship a new device right away.",
        "We are shipping a new device right away.",
        "A new device ships to you right away.",
    ),
}

_REPLIES.update(
    {
        "fitness.plan_switch": (
            "We moved you to the monthly plan and refunded the difference.",
            "You are on the monthly plan now and the difference is refunded.",
            "We switched you to monthly and refunded the difference.",
        ),
        "fitness.double": (
            "The second payment is refunded to your card.",
            "We refunded the second payment to your card.",
            "Your second payment has gone back to your card.",
        ),
        "fitness.delivery": (
            "Pick a new delivery slot from the link we just sent.",
            "Choose a new delivery slot with the link we sent.",
            "Use the link we sent to pick a new delivery slot.",
        ),
        "fitness.parts": (
            "A parts pack is on its way to you today.",
            "We are sending you a parts pack today.",
            "A pack with the missing parts ships today.",
        ),
        "fitness.history": (
            "Sync the app from settings to bring your workouts back.",
            "Run a sync from settings to restore your workouts.",
            "Your workouts come back after a sync from settings.",
        ),
        "fitness.pause": (
            "You can pause your membership from the account page.",
            "Pause your membership on the account page.",
            "The account page lets you pause your membership.",
        ),
        "fitness.link": (
            "Connect your devices under profile and then sharing.",
            "Go to profile and sharing to connect your devices.",
            "Under profile and sharing you can connect your devices.",
        ),
        "fitness.restart": (
            "Hold the power button for ten seconds to restart the machine.",
            "Restart the machine by holding power for ten seconds.",
            "Hold power for ten seconds and the machine restarts.",
        ),
        "fitness.calibrate": (
            "Run the calibration from the machine settings menu.",
            "Calibrate the machine from its settings menu.",
            "Start the calibration in the machine settings menu.",
        ),
        "fitness.pickup": (
            "We will collect the machine and refund you in full.",
            "We are collecting the machine and refunding you in full.",
            "A pickup is booked and you get a full refund.",
        ),
    }
)

# Ticket pattern (as in corpus._PATTERNS) -> the issue it raises.
ISSUE_OF: dict[str, str] = {
    # retail billing
    "I was charged twice for my {p}": "retail.refund_charge",
    "why is there an extra fee of ${n} on my bill": "retail.explain_charge",
    "the invoice for my {p} shows the wrong amount": "retail.explain_charge",
    "my card got billed ${n} but I cancelled the {p}": "retail.refund_charge",
    "can you explain this charge from {d}": "retail.explain_charge",
    "refund the double payment please, it was ${n}": "retail.refund_charge",
    "the promo code did not apply and I paid full price for the {p}": "retail.promo",
    "I need a copy of the receipt for my {p}": "retail.receipt",
    # retail shipping
    "where is my {p}, it was supposed to arrive {d}": "retail.tracking",
    "tracking for my {p} hasn't updated in {n} days": "retail.tracking",
    "the courier says delivered but no {p} here": "retail.lost_parcel",
    "can I change the delivery address for my {p}": "retail.address",
    "my {p} is stuck in customs": "retail.tracking",
    "delivery is late by {n} days, what is going on": "retail.tracking",
    "the box arrived crushed and the {p} is missing": "retail.lost_parcel",
    "when will my {p} ship": "retail.tracking",
    # retail account
    "I can't log in to my account": "retail.login",
    "reset my password please, the link expired": "retail.login",
    "how do I change the email on my account": "retail.profile",
    "please delete my account and all my data": "retail.delete",
    "someone else used my account to order a {p}": "retail.hacked",
    "I never got the verification email": "retail.login",
    "update my phone number on the profile": "retail.profile",
    "two-factor code never arrives, locked out": "retail.login",
    # retail technical
    "the website crashes when I pay": "retail.site_bug",
    "the checkout page keeps spinning": "retail.site_bug",
    "your app freezes when I open my orders": "retail.site_bug",
    "the {p} won't turn on out of the box": "retail.dead_item",
    "error {n} when I try to apply a coupon": "retail.site_bug",
    "the size chart page is blank": "retail.site_bug",
    # retail returns
    "I want to return my {p}": "retail.return",
    "how do I send back the {p}, it doesn't fit": "retail.return",
    "the {p} is defective, I need a replacement": "retail.replace",
    "can I exchange the {p} for a bigger size": "retail.return",
    "return label for the {p} isn't working": "retail.return",
    "I returned the {p} {n} days ago and no refund yet": "retail.refund_wait",
    "wrong item, I ordered a {p} and got something else": "retail.replace",
    # smart_home billing
    "my monitoring subscription renewed at ${n} without warning": "smart_home.cancel_plan",
    "I was billed for the premium plan on my {p} but I'm on basic": "smart_home.cancel_plan",
    "why does the cloud recording plan cost ${n} now": "smart_home.plan_price",
    "cancel the subscription for the {p}, you still charge me": "smart_home.cancel_plan",
    "the app store charged me twice for the {p} plan": "smart_home.cancel_plan",
    # smart_home shipping
    "my {p} preorder still says processing after {n} days": "smart_home.preorder",
    "the replacement {p} you promised never shipped": "smart_home.preorder",
    "installer kit for the {p} didn't arrive with the order": "smart_home.kit",
    "where's the tracking number for my {p}": "smart_home.preorder",
    # smart_home account
    "how do I share access to my {p} with my partner": "smart_home.share",
    "I can't sign in to the home app after the update": "smart_home.sign_in",
    "remove my old house from the account": "smart_home.move",
    "transfer ownership of the {p} to the new tenant": "smart_home.move",
    "the invite to the household never arrived": "smart_home.share",
    # smart_home technical
    "my {p} keeps going offline every night": "smart_home.connect",
    "the {p} won't pair with the hub": "smart_home.connect",
    "firmware update failed on the {p}, stuck at {n} percent": "smart_home.reset",
    "the {p} shows the wrong temperature": "smart_home.calibrate",
    "{p} disconnects from wifi after the router restart": "smart_home.connect",
    "the {p} is blinking red and doesn't respond": "smart_home.reset",
    "live view on the {p} lags by {n} seconds": "smart_home.lag",
    "the automation that turns on the {p} at sunset stopped working": "smart_home.automation",
    "zigbee {p} not found when scanning": "smart_home.connect",
    "after the update the {p} drains its battery in {n} days": "smart_home.battery",
    # smart_home returns
    "I want to return the {p}, it doesn't work with my heating": "smart_home.return",
    "send me a return label for the {p}": "smart_home.return",
    "the {p} is dead on arrival, exchange it": "smart_home.doa",
    "can I return the {p} after installing it": "smart_home.return",
    # fitness
    "the annual membership renewed at ${n} and I wanted monthly": "fitness.plan_switch",
    "I paid for the {p} twice this month": "fitness.double",
    "the family plan charge is ${n} higher than advertised": "fitness.plan_switch",
    "stop charging me for the {p}, I cancelled in {d}": "fitness.double",
    "the {p} delivery slot was missed again": "fitness.delivery",
    "freight for my {p} has been pending {n} days": "fitness.delivery",
    "the {p} arrived without the assembly screws": "fitness.parts",
    "my workout history vanished after I logged in again": "fitness.history",
    "how do I pause my membership for {n} weeks": "fitness.pause",
    "link my watch to the training app account": "fitness.link",
    "merge my two profiles, one has all my workouts": "fitness.history",
    "my coach can't see my {p} progress": "fitness.link",
    "the {p} screen freezes during a class": "fitness.restart",
    "resistance on the {p} stays at level {n}": "fitness.calibrate",
    "the {p} loses bluetooth mid workout": "fitness.restart",
    "calories on the {p} are way off": "fitness.calibrate",
    "the {p} is too loud for my flat, can I send it back": "fitness.pickup",
    "return the {p}, it squeaks after {n} days": "fitness.pickup",
    "collect the {p}, I changed my mind": "fitness.pickup",
}

# Any phrasing -> all phrasings of its reply: what a user who knows the answer accepts.
_PHRASINGS_OF = {p: phrasings for phrasings in _REPLIES.values() for p in phrasings}


def reply_for(pattern: str) -> str:
    """The reference reply to a ticket written from ``pattern``."""
    return _REPLIES[ISSUE_OF[pattern]][0]


def phrasings(reply: str) -> tuple[str, ...]:
    """Every phrasing of the reply ``reply`` is one of (surrounding whitespace ignored)."""
    try:
        return _PHRASINGS_OF[reply.strip()]
    except KeyError:
        raise ValueError(
            f"{reply!r} is not a reference reply of the demo corpus (refinery/demo/replies.py)"
        ) from None


def references() -> list[str]:
    """All reference replies, one per issue."""
    return [options[0] for options in _REPLIES.values()]
