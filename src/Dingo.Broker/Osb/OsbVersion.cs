namespace Dingo.Broker.Osb;

/// <summary>An OSB API version from `X-Broker-API-Version` (major.minor), as the broker compares them.</summary>
public readonly record struct OsbVersion(int Major, int Minor) : IComparable<OsbVersion>
{
    public static readonly OsbVersion Oldest = new(2, 13);
    public static readonly OsbVersion Latest = new(2, 17);

    /// <summary>Where the middleware leaves the request's version (HttpContext.Items) once it has checked it.</summary>
    public const string ItemKey = "dingo.osb-version";

    /// <summary>"2.15" → 2.15; null for anything but digits, one dot, digits (no patch part: OSB headers carry none).</summary>
    public static OsbVersion? Parse(string? text)
    {
        if (string.IsNullOrEmpty(text) || text.Length > 9) return null;
        var dot = text.IndexOf('.', StringComparison.Ordinal);
        if (dot <= 0 || dot == text.Length - 1) return null;
        var (major, minor) = (text[..dot], text[(dot + 1)..]);
        if (!major.All(char.IsAsciiDigit) || !minor.All(char.IsAsciiDigit)) return null;
        return new OsbVersion(int.Parse(major, System.Globalization.CultureInfo.InvariantCulture), int.Parse(minor, System.Globalization.CultureInfo.InvariantCulture));
    }

    /// <summary>Versions this broker answers: 2.13 to 2.17 (the spec it implements is 2.17; older platforms get what their version defines).</summary>
    public bool Supported => this >= Oldest && this <= Latest;

    public bool AtLeast(int major, int minor) => this >= new OsbVersion(major, minor);

    /// <summary>The version a request carries (the middleware checked it); the latest when none was recorded (tests calling a handler alone).</summary>
    public static OsbVersion Of(HttpContext context) => context.Items.TryGetValue(ItemKey, out var v) && v is OsbVersion version ? version : Latest;

    public int CompareTo(OsbVersion other) => Major != other.Major ? Major.CompareTo(other.Major) : Minor.CompareTo(other.Minor);
    public static bool operator <(OsbVersion a, OsbVersion b) => a.CompareTo(b) < 0;
    public static bool operator >(OsbVersion a, OsbVersion b) => a.CompareTo(b) > 0;
    public static bool operator <=(OsbVersion a, OsbVersion b) => a.CompareTo(b) <= 0;
    public static bool operator >=(OsbVersion a, OsbVersion b) => a.CompareTo(b) >= 0;

    public override string ToString() => $"{Major}.{Minor}";
}
